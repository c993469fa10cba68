//! The Grafana dashboard's queries and the alert rules, evaluated by a real
//! Prometheus that scrapes a short load run of the real `dispatcher`
//! binary with faults on (throttling, 5xx, a rejecting receiver, one that is
//! down for a while): every query must run, and return series.
//!
//! "Returns series" is checked on each expression's *series form*: its
//! comparisons made `bool` (so `x > 0.9` keeps its series, at 0 or 1),
//! `unless` made `and` (the join must match once the condition clears) and
//! `absent(x)` made `x`. An expression that names metrics that exist but
//! selects or joins nothing then shows up, whatever the values were at the
//! moment. The rules are also loaded as Prometheus rule files, and each must
//! evaluate without error.
//!
//! Needs the `prometheus` server binary (Debian's `prometheus` package,
//! which `.ci/run` installs). Without it the test says SKIPPED and passes,
//! except in CI (`CI` set), where it fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loadtest::run::{run, RunOptions};
use loadtest::scenario::Scenario;
use serde_json::Value;

/// Faults on four endpoints of five (the flaky one ordered per contact, so
/// that the blocked-key series exist); a retry topic named as the alert
/// rules and the dashboard expect it by default.
const SCENARIO: &str = r#"
name: prometheus
description: faults on four endpoints of five, scraped by a real Prometheus
kafka:
  partitions: 4
dispatcher:
  config:
    kafka:
      retry_topic: dispatcher.retry
      # Consumer lag every second rather than every 5.
      options: {statistics.interval.ms: 1000}
endpoints:
  - id: healthy
  - id: throttled
    faults: [{kind: throttle, ratio: 0.3, retry_after: 1s}]
  - id: flaky
    config: {ordering: {key: data.contact_id}}
    faults: [{kind: error, status: 503, ratio: 0.2}]
  - id: rejecting
    faults: [{kind: error, status: 400, ratio: 0.1}]
  - id: down
    config: {circuit_breaker: {open_for: 1s}}
    faults: [{kind: refuse, from: 2s, until: 12s}]
phases:
  - name: load
    rate: 100
    duration: 25s
settle_timeout: 15s
timeout: 2m
interval: 1s
ceiling: {enabled: false}
"#;

/// Grafana's variables, as a dashboard user with every value selected sees them.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "30s"),
    ("$__interval", "10s"),
    ("$__range", "5m"),
    ("$namespace", ".*"),
    ("$pod", ".*"),
    ("$endpoint", ".*"),
    ("$tenant", ".*"),
    ("$retry_topic", "dispatcher.retry"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Prometheus server, on 127.0.0.1; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start it on `config`, or `None` when there is no `prometheus` binary.
    fn start(dir: &Path, config: &Path) -> Option<Prometheus> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        match child {
            Ok(child) => Some(Prometheus {
                child,
                addr,
                client: Client::builder(TokioExecutor::new()).build_http(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("starting prometheus: {e}"),
        }
    }

    /// One API call: GET without a form, else a form POST. (status, JSON).
    async fn api(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let uri = format!("http://{}{path}", self.addr);
        let request = if form.is_empty() {
            http::Request::get(uri).body(Full::default())
        } else {
            let body: Vec<String> = form
                .iter()
                .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                .collect();
            http::Request::post(uri)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body.join("&"))))
        }
        .unwrap();
        let response = self
            .client
            .request(request)
            .await
            .expect("Prometheus answers");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned())),
        )
    }

    /// An instant query now: `Ok(number of series)` or `Err(why)`.
    async fn query(&self, expr: &str) -> Result<usize, String> {
        let (status, v) = self.api("/api/v1/query", &[("query", expr)]).await;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {v}"));
        }
        Ok(match v["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => v["data"]["result"].as_array().map_or(0, Vec::len),
            Some("scalar" | "string") => 1,
            _ => 0,
        })
    }

    /// The single value of a query that must return one, or 0.
    async fn value(&self, expr: &str) -> f64 {
        let (_, v) = self.api("/api/v1/query", &[("query", expr)]).await;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0)
    }

    async fn ready(&self) -> bool {
        let uri = format!("http://{}/-/ready", self.addr);
        let request = http::Request::get(uri).body(Full::default()).unwrap();
        matches!(self.client.request(request).await, Ok(r) if r.status() == 200)
    }
}

/// `application/x-www-form-urlencoded`: everything but unreserved bytes escaped.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `expr` with Grafana's variables filled in; panics on one it does not know.
fn fill_variables(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (name, value) in VARIABLES {
        out = out.replace(name, value);
    }
    assert!(!out.contains('$'), "unknown dashboard variable in {expr}");
    out
}

/// The series form of a PromQL expression (see the module documentation).
fn series_form(expr: &str) -> String {
    let expr = unwrap_calls(expr, "absent");
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() + 16);
    let (mut i, mut braces, mut quote) = (0, 0usize, None::<char>);
    let word_at = |i: usize, w: &str| {
        let w: Vec<char> = w.chars().collect();
        chars[i..].starts_with(&w)
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'))
            && chars
                .get(i + w.len())
                .is_none_or(|c| !(c.is_alphanumeric() || *c == '_'))
    };
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            _ if braces == 0 => {
                let op_len = match (c, chars.get(i + 1)) {
                    ('>' | '<' | '=' | '!', Some('=')) => 2,
                    ('>' | '<', _) => 1,
                    _ => 0,
                };
                if op_len > 0 {
                    out.extend(&chars[i..i + op_len]);
                    i += op_len;
                    let rest: String = chars[i..].iter().collect();
                    if !rest.trim_start().starts_with("bool") {
                        out.push_str(" bool");
                    }
                    continue;
                }
                if word_at(i, "unless") {
                    out.push_str("and");
                    i += "unless".len();
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `expr` with every call `name(x)` replaced by `x`.
fn unwrap_calls(expr: &str, name: &str) -> String {
    let mut out = expr.to_owned();
    let open = format!("{name}(");
    while let Some(start) = out.find(&open) {
        let inner = start + open.len();
        let mut depth = 1;
        let mut quote = None;
        let mut close = None;
        let mut escaped = false;
        for (j, c) in out[inner..].char_indices() {
            match (quote, c) {
                (Some(_), _) if escaped => escaped = false,
                (Some(_), '\\') => escaped = true,
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quote = Some(c),
                (None, '(') => depth += 1,
                (None, ')') => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(inner + j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.unwrap_or_else(|| panic!("unbalanced {name}( in {expr}"));
        out = format!(
            "{}{}{}",
            &out[..start],
            &out[inner..close],
            &out[close + 1..]
        );
    }
    out
}

/// Every string under the key `key`, anywhere in a JSON document.
fn json_strings(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key => out.push(s.clone()),
                    _ => json_strings(v, key, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| json_strings(v, key, out)),
        _ => {}
    }
}

/// (where, expression) of every dashboard query and every alert rule.
fn shipped_expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = repo().join("helm/dispatcher/files/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for file in files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut exprs = Vec::new();
        json_strings(&doc, "expr", &mut exprs);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        out.extend(
            exprs
                .into_iter()
                .map(|e| (name.clone(), fill_variables(&e))),
        );
    }
    for (alert, expr) in alert_rules() {
        out.push((format!("alert {alert}"), expr));
    }
    out
}

/// (name, expr) of every alert in the shipped rule file.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("helm/dispatcher/files/alerts.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    doc["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_owned(),
                r["expr"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_returns_series_in_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets.json");
    std::fs::write(&targets, "[]").unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - "{rules}"
scrape_configs:
  - job_name: dispatcher
    honor_labels: true
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"#,
            rules = repo().join("helm/dispatcher/files/alerts.yaml").display(),
            targets = targets.display(),
        ),
    )
    .unwrap();
    let Some(prometheus) = Prometheus::start(dir.path(), &config) else {
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !in_ci,
            "the prometheus binary is not installed, and CI is set: .ci/run installs it (Debian package prometheus)"
        );
        eprintln!("SKIPPED: no prometheus binary (apt-get install prometheus)");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !prometheus.ready().await {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not become ready; its log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The load run, in the background; it ends by itself.
    let scenario = Scenario::from_yaml("prometheus test", SCENARIO).unwrap();
    scenario.check().unwrap();
    let options = RunOptions {
        dispatcher: loadtest::fleet::locate_dispatcher(None, true)
            .expect("a dispatcher binary to test"),
        brokers: None,
        work_dir: Some(dir.path().join("run")),
        progress: false,
        prometheus_targets: Some(targets.clone()),
    };
    let load = tokio::spawn(async move { run(&scenario, &options).await });

    // Until Prometheus has what the queries look at: 15 s of scrapes, every
    // fault at work (dead letters, parking), and consumer lag on the retry
    // topics (known once a parked delivery was read back and committed).
    let ready_queries = [
        r#"min(count_over_time(up{job="dispatcher"}[1m]))"#,
        r#"sum(dispatcher_dead_letters_total)"#,
        r#"sum(dispatcher_parked_total{reason="breaker_open"})"#,
        r#"count(dispatcher_consumer_lag{topic=~"dispatcher\\.retry\\..+"})"#,
    ];
    let mut last = Vec::new();
    loop {
        last.clear();
        for q in ready_queries {
            last.push(prometheus.value(q).await);
        }
        if last[0] >= 15.0 && last[1..].iter().all(|v| *v > 0.0) {
            break;
        }
        assert!(
            !load.is_finished(),
            "the load run ended before Prometheus saw enough of it: {:?} = {last:?}; its result: {:?}",
            ready_queries,
            load.await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut problems = Vec::new();
    let expressions = shipped_expressions();
    for (source, expr) in &expressions {
        if let Err(e) = prometheus.query(expr).await {
            problems.push(format!("{source}: does not run: {expr}\n    {e}"));
            continue;
        }
        let series = series_form(expr);
        match prometheus.query(&series).await {
            Ok(0) => problems.push(format!("{source}: returns no series: {series}")),
            Ok(_) => {}
            Err(e) => problems.push(format!(
                "{source}: series form does not run: {series}\n    {e}"
            )),
        }
    }

    // The rule file as Prometheus itself evaluates it.
    let (_, rules) = prometheus.api("/api/v1/rules", &[]).await;
    let mut loaded = 0;
    for group in rules["data"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            loaded += 1;
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {}: health {} {}",
                    rule["name"], rule["health"], rule["lastError"]
                ));
            }
        }
    }
    let alerts = alert_rules().len();
    if loaded != alerts {
        problems.push(format!(
            "Prometheus loaded {loaded} rules of the {alerts} in the file"
        ));
    }

    let report = load.await.unwrap().expect("the load run");
    assert!(
        problems.is_empty(),
        "{} of {} expressions (and the rules) fail against a live scrape:\n  {}",
        problems.len(),
        expressions.len(),
        problems.join("\n  ")
    );
    assert!(report.accounting.total.delivered > 0);
    eprintln!(
        "{} dashboard queries and alert expressions, and {loaded} rules, all return series",
        expressions.len()
    );
}

#[test]
fn the_series_form_keeps_series_that_conditions_would_drop() {
    assert_eq!(
        series_form(r#"absent(up{job="dispatcher"} == 1)"#),
        r#"up{job="dispatcher"} == bool 1"#
    );
    assert_eq!(
        series_form(r#"sum(rate(x{a!="b", c=~"d>e"}[5m])) > 0.5"#),
        r#"sum(rate(x{a!="b", c=~"d>e"}[5m])) > bool 0.5"#
    );
    assert_eq!(
        series_form("max by (p) (a) unless on (p) max by (p) (b)"),
        "max by (p) (a) and on (p) max by (p) (b)"
    );
    assert_eq!(
        series_form("a >= 1 and on (x) b <= bool 2 or c != 3"),
        "a >= bool 1 and on (x) b <= bool 2 or c != bool 3"
    );
    assert_eq!(series_form("unlessly_named"), "unlessly_named");
    assert_eq!(
        fill_variables(r#"rate(x{pod=~"$pod", topic=~"$retry_topic\\..+"}[$__rate_interval])"#),
        r#"rate(x{pod=~".*", topic=~"dispatcher.retry\\..+"}[30s])"#
    );
}
