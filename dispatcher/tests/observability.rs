//! What SREs see: `/metrics` scraped over HTTP from the admin port while the
//! pipeline runs (embedded Kafka, real HTTP receivers) and after it is done.
//!
//! - Every metric the Grafana dashboard and the alert rules query (and every
//!   series the alert-rule tests feed in) exists in a live scrape, with the
//!   labels the queries select and group by. Series that only appear when
//!   the delivery policy acts (breaker transitions, parked deliveries, lag on
//!   the retry topics) come from a second run with a failing endpoint.
//! - The counters add up: per topic, consumed = routed + unrouted + invalid;
//!   per endpoint, delivered + dead-lettered = the events it subscribes to.
//! - `promtool check metrics` accepts the scrape (skipped with a message when
//!   promtool is not installed, except in CI, which installs it).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dispatcher::seed::{SeedEvents, EVENT_TYPES};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::kafka::{committed_total, produce};
use support::sink::{Behaviour, Sink};
use support::{config, start};

// ------------------------------------------------------------------ scrape

/// One sample of the text exposition format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` answer.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
    /// Metric family name -> type (`counter`, `gauge`, `histogram`, ...).
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_sample(line));
        }
        Scrape {
            text,
            samples,
            types,
        }
    }

    /// Sum of the samples of `name` whose labels include `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The family a sample name belongs to, and whether the name may be
    /// queried: a family's own name unless it is a histogram or summary,
    /// whose series are `_bucket` (histograms), `_sum` and `_count`.
    fn resolve(&self, name: &str) -> Result<String, String> {
        if let Some(kind) = self.types.get(name) {
            return match kind.as_str() {
                "histogram" | "summary" => Err(format!(
                    "{name} is a {kind}: query {name}_bucket, _sum or _count"
                )),
                _ => Ok(name.to_owned()),
            };
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                match self.types.get(family).map(String::as_str) {
                    Some("histogram") => return Ok(family.to_owned()),
                    Some("summary") if suffix != "_bucket" => return Ok(family.to_owned()),
                    _ => {}
                }
            }
        }
        Err(format!("{name} is not exported"))
    }

    /// Label names the samples of a family carry.
    fn label_names(&self, family: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == family
                    || s.name
                        .strip_prefix(family)
                        .is_some_and(|r| ["_bucket", "_sum", "_count"].contains(&r))
            })
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }

    /// Every counter series and its value.
    fn counters(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| self.types.get(&s.name).map(String::as_str) == Some("counter"))
            .map(|s| (series_key(s), s.value))
            .collect()
    }
}

fn series_key(s: &Sample) -> String {
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

/// `name{a="x",b="y"} 1.5` (no timestamps: the dispatcher writes none).
fn parse_sample(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("sample line without a value: {line}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line}: {e}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            (name.to_owned(), parse_labels(body))
        }
    };
    Sample {
        name,
        labels,
        value,
    }
}

/// `a="x",b="y\"z"` -> {a: x, b: y"z}.
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if name.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('='), "label {name} without a value");
        assert_eq!(chars.next(), Some('"'), "label {name}: value not quoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("dangling escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name.trim().to_owned(), value);
    }
    labels
}

/// GET /metrics over HTTP, as Prometheus does.
async fn scrape(addr: SocketAddr) -> Scrape {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/metrics").parse().unwrap();
    let response = client.get(uri).await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content-type {content_type}"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Scrape::parse(String::from_utf8(body.to_vec()).expect("UTF-8 exposition"))
}

/// Poll the scrape until `check` holds; panics with the last scrape after
/// `timeout` (the bound only guards against a hang).
async fn scrape_until(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(addr).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ promtool

/// `promtool check metrics` on a scrape: exit 0 is clean, 3 lint problems,
/// 1 a parse error.
fn promtool_check(scrape: &Scrape, when: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !in_ci,
                "promtool is not installed, and CI is set: .ci/run installs it (Debian package prometheus)"
            );
            eprintln!("SKIPPED: promtool check metrics ({when}): promtool is not installed (apt-get install prometheus)");
            return;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics ({when}) failed with {}:\n{}{}\n--- the scrape ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        scrape.text
    );
}

// ------------------------------------------------------------------ queries

/// Labels every scrape target carries (Kubernetes service discovery and the
/// chart's ServiceMonitor), which the queries may group and select by.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "job",
    "instance",
    "service",
    "container",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `dispatcher_[a-z_]+` identifier in a text.
fn metric_names(text: &str) -> Vec<(String, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("dispatcher_") {
        let start = from + at;
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        let preceded = start > 0 && ident(bytes[start - 1]);
        let mut end = start + "dispatcher_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded && end > start + "dispatcher_".len() {
            out.push((text[start..end].to_owned(), end));
        }
        from = end;
    }
    out
}

/// The label names of the selector right after position `at`, if any:
/// `{a="x", b=~"y"}`.
fn selector_labels(text: &str, at: usize) -> Vec<String> {
    let rest = &text[at..];
    let Some(body) = rest.strip_prefix('{') else {
        return vec![];
    };
    let mut labels = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in body.chars() {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '}' => break,
            ',' => current.clear(),
            '=' | '!' => {
                if !current.trim().is_empty() {
                    labels.push(current.trim().to_owned());
                }
                current.clear();
            }
            '~' => {}
            c => current.push(c),
        }
    }
    labels
}

/// Label names in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`,
/// `group_left (...)` and `group_right (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        let mut from = 0;
        while let Some(at) = expr[from..].find(keyword) {
            let start = from + at;
            from = start + keyword.len();
            let before = expr[..start].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = expr[from..].trim_start();
            let Some(list) = rest.strip_prefix('(') else {
                continue;
            };
            let Some(close) = list.find(')') else {
                continue;
            };
            out.extend(
                list[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// Check one PromQL expression (or other text naming series) against the
/// scrape; returns the problems found.
fn check_expr(scrape: &Scrape, source: &str, expr: &str, is_promql: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut known: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for (name, end) in metric_names(expr) {
        let family = match scrape.resolve(&name) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{source}: {e}"));
                continue;
            }
        };
        let mut labels = scrape.label_names(&family);
        if name.ends_with("_bucket") {
            labels.insert("le".into());
        }
        for label in selector_labels(expr, end) {
            if !labels.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{source}: {name} has no label `{label}` (it has {labels:?})"
                ));
            }
        }
        known.extend(labels);
    }
    if is_promql {
        for label in grouping_labels(expr) {
            if !known.contains(&label) {
                problems.push(format!(
                    "{source}: groups by `{label}`, which none of its metrics has"
                ));
            }
        }
    }
    problems
}

/// Every string in a JSON document, with the key it is under.
fn json_strings<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        serde_json::Value::String(s) => out.push((key.to_owned(), s)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, key, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| json_strings(x, k, out)),
        _ => {}
    }
}

/// Every string in a YAML document, with the key it is under.
fn yaml_strings(v: &serde_yaml_ng::Value, key: &str, out: &mut Vec<(String, String)>) {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => out.push((key.to_owned(), s.clone())),
        Value::Sequence(a) => a.iter().for_each(|x| yaml_strings(x, key, out)),
        Value::Mapping(m) => m.iter().for_each(|(k, x)| {
            yaml_strings(x, k.as_str().unwrap_or_default(), out);
        }),
        _ => {}
    }
}

/// The dashboard, alert rules and alert-rule tests, checked against a scrape.
fn check_shipped_queries(scrape: &Scrape) {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();

    let dashboards = repo().join("helm/dispatcher/files/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dashboards)
        .expect("dashboards folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no dashboard in {}",
        dashboards.display()
    );
    for file in &files {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).expect("dashboard JSON");
        let mut strings = Vec::new();
        json_strings(&doc, "", &mut strings);
        let source = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut queries = 0;
        for (key, s) in strings {
            let promql = key == "expr";
            queries += promql as usize;
            names.extend(metric_names(s).into_iter().map(|n| n.0));
            problems.extend(check_expr(scrape, &source, s, promql));
        }
        assert!(queries > 20, "{source}: only {queries} queries found");
    }

    for (file, promql_key) in [
        ("helm/dispatcher/files/alerts.yaml", "expr"),
        ("helm/tests/alerts.test.yaml", "series"),
    ] {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join(file)).unwrap())
                .expect("YAML");
        let mut strings = Vec::new();
        yaml_strings(&doc, "", &mut strings);
        let mut queries = 0;
        for (key, s) in strings {
            let promql = key == promql_key;
            queries += promql as usize;
            names.extend(metric_names(&s).into_iter().map(|n| n.0));
            problems.extend(check_expr(scrape, file, &s, promql));
        }
        assert!(queries >= 10, "{file}: only {queries} expressions found");
    }

    assert!(
        problems.is_empty(),
        "the dashboard or alert rules use what the dispatcher does not export:\n  {}",
        problems.join("\n  ")
    );
    eprintln!(
        "dashboard and alert rules use {} metrics, all exported: {names:?}",
        names.len()
    );
}

// ------------------------------------------------------------------ the run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_and_cover_the_dashboard_and_alerts() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let messages = Sink::start(Behaviour::Ok).await;
    let filtered = Sink::start(Behaviour::Ok).await;
    let conversations = Sink::start(Behaviour::Ok).await;
    // Answers 400: every delivery fails permanently and is dead-lettered.
    let rejecting = Sink::start(Behaviour::Status(400)).await;
    // campaign.completed and transfer.created have no subscriber: unrouted.
    let endpoints = format!(
        r#"
  - id: messages
    url: "{}"
    events: ["message.*"]
  - id: acct-1-inbox
    url: "{}"
    events: [message.received]
    filter: {{ "data.whatsapp_account_id": acct-1 }}
  - id: conversations
    url: "{}"
    events: ["conversation.*"]
    ordering: {{ key: data.conversation_id }}
  - id: contacts-rejecting
    url: "{}"
    events: [contact.created, contact.updated]
  - id: switched-off
    url: "http://127.0.0.1:9/"
    events: ["*"]
    enabled: false
"#,
        messages.url("/hook"),
        filtered.url("/hook"),
        conversations.url("/hook"),
        rejecting.url("/hook"),
    );
    let running = start(config(kafka.bootstrap(), "observability", "", &endpoints)).await;
    let addr = running.admin_addr;
    let enabled = [
        "messages",
        "acct-1-inbox",
        "conversations",
        "contacts-rejecting",
    ];

    // Before any traffic: every enabled endpoint's series exist, at zero,
    // and no other endpoint label appears (bounded cardinality).
    let idle = scrape(addr).await;
    for ep in enabled {
        for outcome in ["delivered", "dead_lettered"] {
            let found = idle.samples.iter().any(|s| {
                s.name == "dispatcher_deliveries_total"
                    && s.labels.get("endpoint").map(String::as_str) == Some(ep)
                    && s.labels.get("outcome").map(String::as_str) == Some(outcome)
                    && s.value == 0.0
            });
            assert!(found, "no zero {outcome} series for {ep} at start-up");
        }
    }
    promtool_check(&idle, "at start-up");

    // The events: every type, several times, and a few invalid records.
    let mut seeds = SeedEvents::new(11);
    let now = chrono::Utc::now().timestamp_millis();
    let mut values = Vec::new();
    let mut valid: Vec<(String, serde_json::Value)> = Vec::new();
    for _ in 0..6 {
        for ty in EVENT_TYPES {
            let (_, value) = seeds.event(ty, now);
            valid.push((ty.to_string(), serde_json::from_slice(&value).unwrap()));
            values.push(value);
        }
    }
    let invalid: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        br#"{"data":{"message_id":"no event field"}}"#.to_vec(),
        br#"{"event":"message.sent","data":"not an object"}"#.to_vec(),
    ];
    values.extend(invalid.iter().cloned());
    let total = values.len() as f64;

    // What each endpoint must get, worked out here rather than by the router.
    let account =
        |v: &serde_json::Value| v["data"]["whatsapp_account_id"].as_str() == Some("acct-1");
    let expected: BTreeMap<&str, usize> = [
        (
            "messages",
            valid
                .iter()
                .filter(|(t, _)| t.starts_with("message."))
                .count(),
        ),
        (
            "acct-1-inbox",
            valid
                .iter()
                .filter(|(t, v)| t == "message.received" && account(v))
                .count(),
        ),
        (
            "conversations",
            valid
                .iter()
                .filter(|(t, _)| t.starts_with("conversation."))
                .count(),
        ),
        (
            "contacts-rejecting",
            valid
                .iter()
                .filter(|(t, _)| t == "contact.created" || t == "contact.updated")
                .count(),
        ),
    ]
    .into_iter()
    .collect();
    let routed = valid
        .iter()
        .filter(|(t, v)| {
            t.starts_with("message.")
                || t.starts_with("conversation.")
                || t.starts_with("contact.")
                || (t == "message.received" && account(v))
        })
        .count() as f64;
    let unrouted = valid.len() as f64 - routed;
    assert!(unrouted > 0.0 && expected["acct-1-inbox"] > 0);

    produce(kafka.bootstrap(), "events", &values).await;

    // During the run: whatever has happened so far is well-formed.
    let during = scrape(addr).await;
    promtool_check(&during, "during the run");

    // Wait until every delivery is final and every record is committed.
    let bootstrap = kafka.bootstrap().to_owned();
    let done = scrape_until(addr, Duration::from_secs(60), "every delivery final", |s| {
        s.sum("dispatcher_events_consumed_total", &[]) == total
            && expected.iter().all(|(ep, n)| {
                s.sum(
                    "dispatcher_deliveries_total",
                    &[("endpoint", ep), ("outcome", "delivered")],
                ) + s.sum(
                    "dispatcher_deliveries_total",
                    &[("endpoint", ep), ("outcome", "dead_lettered")],
                ) >= *n as f64
            })
            && s.sum("dispatcher_events_in_flight", &[]) == 0.0
    })
    .await;
    support::wait_until(
        Duration::from_secs(30),
        "offsets committed to the end",
        || committed_total(&bootstrap, "observability", "events") == total as i64,
    )
    .await;
    // Let anything that should not happen show up before judging.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = scrape_until(
        addr,
        Duration::from_secs(30),
        "committed offsets exported",
        |s| s.sum("dispatcher_committed_offset", &[("topic", "events")]) == total,
    )
    .await;

    // Counters only grow.
    let before = during.counters();
    let after = end.counters();
    for (series, value) in &before {
        let later = after.get(series).copied().unwrap_or(f64::NAN);
        assert!(later >= *value, "{series} went from {value} to {later}");
    }
    assert!(done.sum("dispatcher_events_consumed_total", &[]) <= total);

    // Per topic: consumed = routed + unrouted + invalid.
    let t = [("topic", "events")];
    let consumed = end.sum("dispatcher_events_consumed_total", &t);
    let got_routed = end.sum("dispatcher_events_routed_total", &t);
    let got_unrouted = end.sum("dispatcher_events_unrouted_total", &t);
    let got_invalid = end.sum("dispatcher_events_invalid_total", &t);
    assert_eq!(consumed, total);
    assert_eq!(
        consumed,
        got_routed + got_unrouted + got_invalid,
        "consumed = routed + unrouted + invalid"
    );
    assert_eq!(got_routed, routed);
    assert_eq!(got_unrouted, unrouted);
    assert_eq!(got_invalid, invalid.len() as f64);
    assert_eq!(
        end.sum("dispatcher_dead_letters_total", &[("stage", "decode")]),
        got_invalid,
        "every invalid record dead-lettered"
    );

    // Per endpoint: delivered + dead-lettered = its subscribed events.
    let sinks: BTreeMap<&str, &Sink> = [
        ("messages", &messages),
        ("acct-1-inbox", &filtered),
        ("conversations", &conversations),
        ("contacts-rejecting", &rejecting),
    ]
    .into_iter()
    .collect();
    let mut dead_lettered_total = 0.0;
    for (ep, n) in &expected {
        let e = [("endpoint", *ep)];
        let delivered = end.sum(
            "dispatcher_deliveries_total",
            &[e[0], ("outcome", "delivered")],
        );
        let dead = end.sum(
            "dispatcher_deliveries_total",
            &[e[0], ("outcome", "dead_lettered")],
        );
        assert_eq!(
            delivered + dead,
            *n as f64,
            "{ep}: delivered {delivered} + dead-lettered {dead} != {n} subscribed events"
        );
        assert_eq!(
            delivered,
            sinks[ep].count() as f64,
            "{ep}: deliveries the receiver saw"
        );
        let attempts = end.sum("dispatcher_delivery_attempts_total", &e);
        assert_eq!(
            end.sum(
                "dispatcher_delivery_attempts_total",
                &[e[0], ("result", "delivered")]
            ),
            delivered,
            "{ep}: one successful attempt per delivery"
        );
        assert_eq!(
            attempts,
            sinks[ep].attempts() as f64,
            "{ep}: attempts the receiver saw"
        );
        assert_eq!(
            end.sum("dispatcher_delivery_attempt_duration_seconds_count", &e),
            attempts,
            "{ep}: every attempt timed"
        );
        assert_eq!(end.sum("dispatcher_endpoint_queue_depth", &e), 0.0);
        assert_eq!(end.sum("dispatcher_endpoint_in_flight", &e), 0.0);
        if *ep == "contacts-rejecting" {
            assert_eq!(delivered, 0.0);
            assert_eq!(
                end.sum(
                    "dispatcher_delivery_attempts_total",
                    &[e[0], ("result", "permanent")]
                ),
                dead
            );
        } else {
            assert_eq!(dead, 0.0, "{ep}: nothing dead-lettered");
        }
        dead_lettered_total += dead;
    }
    assert!(dead_lettered_total > 0.0);
    assert_eq!(
        end.sum("dispatcher_dead_letters_total", &[("stage", "delivery")]),
        dead_lettered_total,
        "every dead-lettered delivery written to the dead-letter topic"
    );
    let delivered_total = end.sum("dispatcher_deliveries_total", &[("outcome", "delivered")]);
    assert_eq!(
        end.sum(
            "dispatcher_event_age_seconds_count",
            &[("transport", "http")]
        ),
        delivered_total,
        "one end-to-end age per delivered delivery"
    );
    assert_eq!(
        end.sum(
            "dispatcher_dispatch_latency_seconds_count",
            &[("transport", "http")]
        ),
        delivered_total,
        "one dispatch latency per delivered delivery"
    );
    // The dispatcher's share of the age cannot be more than the age (which
    // is counted in whole milliseconds: allow one per delivery).
    assert!(
        end.sum("dispatcher_dispatch_latency_seconds_sum", &[])
            <= end.sum("dispatcher_event_age_seconds_sum", &[]) + delivered_total * 0.001,
        "dispatch latency above the end-to-end age"
    );

    // Bounded labels: only configured, enabled endpoints; only the
    // configured topics (the internal topics' counters exist from the start).
    let endpoint_labels: BTreeSet<&str> = end
        .samples
        .iter()
        .filter_map(|s| s.labels.get("endpoint").map(String::as_str))
        .collect();
    assert_eq!(endpoint_labels, enabled.iter().copied().collect());
    let topic_labels: BTreeSet<&str> = end
        .samples
        .iter()
        .filter_map(|s| s.labels.get("topic").map(String::as_str))
        .collect();
    let mut topics = BTreeSet::from(["events", support::SPILL_TOPIC]);
    topics.extend(support::RETRY_TOPICS);
    assert_eq!(topic_labels, topics);

    // The rest of the pipeline's state.
    assert_eq!(end.sum("dispatcher_events_in_flight", &[]), 0.0);
    assert_eq!(end.sum("dispatcher_source_paused", &[]), 0.0);
    // All 4 source partitions (and whatever else the consumer reads).
    assert!(end.sum("dispatcher_assigned_partitions", &[]) >= 4.0);
    assert!(end.sum("dispatcher_rebalances_total", &[("kind", "assign")]) >= 1.0);
    assert!(end.sum("dispatcher_offset_commits_total", &[("result", "ok")]) >= 1.0);
    assert_eq!(
        end.sum("dispatcher_dead_letter_write_errors_total", &[]),
        0.0
    );
    assert_eq!(
        end.sum(
            "dispatcher_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    promtool_check(&end, "after the run");
    running.shutdown().await.unwrap();

    // The delivery policy's series that only appear when it acts (a breaker
    // transition, a parked delivery, lag on a retry topic) come from a
    // second run, with an endpoint that fails.
    let policy = policy_scrape(&kafka).await;
    promtool_check(&policy, "with a failing endpoint");

    // What Grafana and Prometheus will query is all there, in one run or
    // the other.
    check_shipped_queries(&Scrape::parse(format!("{}\n{}", end.text, policy.text)));
}

/// A run whose only endpoint answers 503: its breaker opens and half-opens,
/// its deliveries are parked and come back, and the retry topics get
/// committed offsets, hence consumer lag. Reads the events the first run
/// produced, in a group of its own.
async fn policy_scrape(kafka: &dispatcher::embedded::EmbeddedKafka) -> Scrape {
    let failing = Sink::start(Behaviour::Status(503)).await;
    let endpoints = format!(
        r#"
  - id: failing
    url: "{}"
    events: ["message.*"]
    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 2, window: 10s, open_for: 300ms, half_open_probes: 1 }}
    retry: {{ schedule: [50ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], max_age: 10m }}
"#,
        failing.url("/hook")
    );
    let running = start(config(
        kafka.bootstrap(),
        "observability-policy",
        "  shutdown_grace: 2s\n",
        &endpoints,
    ))
    .await;
    let on_retry_topic = |s: &Scrape, name: &str| {
        s.samples.iter().any(|x| {
            x.name == name
                && x.labels
                    .get("topic")
                    .is_some_and(|t| t.starts_with("dispatcher.retry."))
        })
    };
    let policy = scrape_until(
        running.admin_addr,
        Duration::from_secs(60),
        "a breaker transition, parked deliveries and consumer lag on a retry topic",
        |s| {
            s.sum(
                "dispatcher_endpoint_breaker_transitions_total",
                &[("endpoint", "failing"), ("to", "open")],
            ) >= 1.0
                && s.sum(
                    "dispatcher_parked_total",
                    &[("endpoint", "failing"), ("reason", "breaker_open")],
                ) >= 1.0
                && on_retry_topic(s, "dispatcher_consumer_lag")
        },
    )
    .await;
    assert_eq!(failing.count(), 0, "nothing was delivered to a 503");
    assert!(
        policy.sum("dispatcher_events_consumed_total", &[]) > 0.0,
        "parked deliveries were read back"
    );
    running.shutdown().await.unwrap();
    policy
}

#[test]
fn the_query_parser_finds_names_labels_and_groupings() {
    let expr = r#"sum by (endpoint, le) (rate(dispatcher_delivery_attempt_duration_seconds_bucket{namespace=~"$ns", result!="x,y}"}[5m])) / on (namespace) group_left dispatcher_build_info"#;
    let names: Vec<String> = metric_names(expr).into_iter().map(|n| n.0).collect();
    assert_eq!(
        names,
        [
            "dispatcher_delivery_attempt_duration_seconds_bucket",
            "dispatcher_build_info"
        ]
    );
    let end = metric_names(expr)[0].1;
    assert_eq!(selector_labels(expr, end), ["namespace", "result"]);
    assert_eq!(grouping_labels(expr), ["endpoint", "le", "namespace"]);
    // Not a metric: part of a longer identifier, or of a job name.
    assert!(metric_names(r#"up{job="dispatcher"} webhook_dispatcher_x"#).is_empty());

    let s = Scrape::parse(
        "# TYPE dispatcher_a_seconds histogram\ndispatcher_a_seconds_bucket{le=\"+Inf\",x=\"a\\\"b\"} 1\ndispatcher_a_seconds_sum 0.5\ndispatcher_a_seconds_count 1\n# TYPE dispatcher_b_total counter\ndispatcher_b_total 3\n"
            .to_owned(),
    );
    assert_eq!(s.samples[0].labels["x"], "a\"b");
    assert_eq!(
        s.resolve("dispatcher_a_seconds_bucket").unwrap(),
        "dispatcher_a_seconds"
    );
    assert!(
        s.resolve("dispatcher_a_seconds").is_err(),
        "a histogram's bare name is no series"
    );
    assert!(
        s.resolve("dispatcher_b_total_count").is_err(),
        "a counter has no _count"
    );
    assert_eq!(
        s.resolve("dispatcher_b_total").unwrap(),
        "dispatcher_b_total"
    );
    assert!(check_expr(&s, "t", "sum by (x) (dispatcher_a_seconds_count)", true).is_empty());
    assert_eq!(
        check_expr(&s, "t", "sum by (y) (dispatcher_b_total{z=\"1\"})", true).len(),
        2
    );
}

/// Before the first event, every series whose labels the config decides is
/// there at zero, so that `increase()` sees the first dead letter, invalid
/// record or parked delivery of each kind (alerts and dashboards otherwise
/// miss it: a series born at 1 has no earlier sample to rise from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_series_are_at_zero_before_the_first_event() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let endpoints = r#"
  - id: crm
    url: "http://127.0.0.1:9/hook"
    events: ["*"]
  - id: off
    url: "http://127.0.0.1:9/hook"
    events: ["*"]
    enabled: false
"#;
    let running = start(config(kafka.bootstrap(), "zero-series", "", endpoints)).await;
    let s = scrape(running.admin_addr).await;
    running.shutdown().await.unwrap();
    assert_eq!(s.sum("dispatcher_events_consumed_total", &[]), 0.0);
    let zero = |name: &str, labels: &[(&str, &str)]| {
        let found = s.samples.iter().any(|x| {
            x.name == name
                && x.value == 0.0
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
        });
        assert!(found, "no {name}{labels:?} at 0 in:\n{}", s.text);
    };
    for outcome in ["delivered", "dead_lettered", "retried", "parked"] {
        zero(
            "dispatcher_deliveries_total",
            &[
                ("endpoint", "crm"),
                ("transport", "http"),
                ("outcome", outcome),
            ],
        );
    }
    for reason in ["retry", "throttled", "breaker_open", "paused"] {
        zero(
            "dispatcher_parked_total",
            &[("endpoint", "crm"), ("reason", reason)],
        );
    }
    zero(
        "dispatcher_endpoint_breaker_transitions_total",
        &[("endpoint", "crm"), ("to", "open")],
    );
    for reason in transports::EventError::CODES {
        zero(
            "dispatcher_events_invalid_total",
            &[("topic", "events"), ("reason", reason)],
        );
        zero(
            "dispatcher_dead_letters_total",
            &[("stage", "decode"), ("reason", reason)],
        );
    }
    for reason in ["retries_exhausted", "expired", "permanent_failure"] {
        zero(
            "dispatcher_dead_letters_total",
            &[("stage", "delivery"), ("reason", reason)],
        );
    }
    zero(
        "dispatcher_dead_letters_total",
        &[("stage", "park"), ("reason", "unknown_endpoint")],
    );
    zero(
        "dispatcher_events_consumed_total",
        &[("topic", "dispatcher.retry.2s")],
    );
    zero("dispatcher_offset_commits_total", &[("result", "error")]);
    zero("dispatcher_rebalances_total", &[("kind", "revoke")]);
    // The sums the alerts on totals read exist before anything happens.
    for outcome in ["delivered", "dead_lettered"] {
        zero(
            "dispatcher_tenant_deliveries_total",
            &[("tenant", ""), ("outcome", outcome)],
        );
    }
    zero("dispatcher_tenant_backlog_lost_total", &[("tenant", "")]);
    assert!(
        !s.text.contains(r#"endpoint="off""#),
        "a disabled endpoint has no series:\n{}",
        s.text
    );
}

/// 100,000 endpoints over 1,000 tenants on one replica: `/metrics` stays
/// under 20,000 series. The troubled and the marked endpoints have series of
/// their own, the tenant sums count every endpoint, and promtool accepts the
/// whole scrape. Prints the figures for docs/benchmarks.md.
#[test]
fn a_hundred_thousand_endpoints_stay_under_twenty_thousand_series() {
    use dispatcher::metrics::{EndpointDetail, Metrics};
    const ENDPOINTS: usize = 100_000;
    const TENANTS: usize = 1_000;
    let m = Metrics::new();
    let lanes: Vec<_> = (0..ENDPOINTS)
        .map(|i| {
            let detail = if i % 10_000 == 7 {
                EndpointDetail::Detailed
            } else {
                EndpointDetail::Auto
            };
            let tenant = format!("waba-{:04}", i % TENANTS);
            m.endpoint_of(&format!("ep-{i:06}"), "http", Some(&tenant), detail)
        })
        .collect();
    for (i, lane) in lanes.iter().enumerate() {
        lane.delivered.inc_by(2);
        // Every 1,000th endpoint fails an attempt: 100 in trouble.
        if i % 1_000 == 3 {
            lane.attempt_retry.inc();
        }
    }
    let started = Instant::now();
    let s = Scrape::parse(m.render());
    let took = started.elapsed();
    let series = s.samples.len();
    let shown: BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.name == "dispatcher_deliveries_total")
        .filter_map(|x| x.labels.get("endpoint").map(String::as_str))
        .collect();
    eprintln!(
        "{ENDPOINTS} endpoints, {TENANTS} tenants: {series} series, {} endpoints shown, {} bytes, rendered and parsed in {took:?}",
        shown.len(),
        s.text.len()
    );
    let mut by_family: BTreeMap<&str, usize> = BTreeMap::new();
    for x in &s.samples {
        *by_family.entry(x.name.as_str()).or_default() += 1;
    }
    assert!(series < 20_000, "{series} series: {by_family:#?}");
    let troubled: BTreeSet<String> = (3..ENDPOINTS)
        .step_by(1_000)
        .map(|i| format!("ep-{i:06}"))
        .collect();
    let marked: BTreeSet<String> = (7..ENDPOINTS)
        .step_by(10_000)
        .map(|i| format!("ep-{i:06}"))
        .collect();
    let expected: BTreeSet<&str> = troubled.iter().chain(&marked).map(String::as_str).collect();
    assert_eq!(
        shown, expected,
        "the troubled and the marked ones, and no other"
    );
    assert_eq!(
        s.sum(
            "dispatcher_tenant_deliveries_total",
            &[("outcome", "delivered")]
        ),
        2.0 * ENDPOINTS as f64,
        "the tenant sums count every endpoint"
    );
    assert_eq!(
        s.sum(
            "dispatcher_tenant_delivery_attempts_total",
            &[("result", "retry")]
        ),
        troubled.len() as f64
    );
    assert_eq!(s.sum("dispatcher_tenant_endpoints", &[]), ENDPOINTS as f64);
    promtool_check(&s, "100,000 endpoints");
}
