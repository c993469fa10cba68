//! Property tests of everything the dispatcher parses from outside: a
//! record of a retry topic (`park::parse`), a dead letter read back by
//! replay (`replay::read_dead_letter`), and the config file
//! (`Config::from_yaml`). Whatever the bytes, each returns a value or an
//! error and never panics. And routing: for arbitrary `data` (duplicated
//! keys included), filters and tenants, the indexed router returns what
//! the linear one does.
//!
//! Inputs mix arbitrary bytes with records and configs built like the real
//! ones and then damaged, which is what reaches past the first check.
//! 100,000 cases per property by default; `PROPTEST_CASES` sets another
//! number (the README has the longer run).

use std::collections::BTreeMap;

use std::sync::Arc;

use dispatcher::config::{Config, FilterValue};
use dispatcher::route::{
    EventPattern, Filter, LinearRouter, RecordParts, RouteTable, Router, Subscriber, Subscription,
    Tenant, TenantKey,
};
use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp;
use serde_json::Value as Json;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000),
        // The faster generator: these tests want many cases, not crypto.
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------ records

const PARK_HEADERS: &[&str] = &[
    "park.endpoint_id",
    "park.delivery_id",
    "park.reason",
    "park.due_ms",
    "park.not_before_ms",
    "park.attempts",
    "park.idle_parks",
    "park.first_attempt_ms",
    "park.history",
    "park.event_ms",
    "park.source.topic",
    "park.source.partition",
    "park.source.offset",
    "park.source.epoch",
    "park.record_key",
    "traceparent",
];

const DLQ_HEADERS: &[&str] = &[
    "dlq.stage",
    "dlq.reason",
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
    "dlq.failed_at",
    "dlq.error",
    "dlq.endpoint_id",
    "dlq.delivery_id",
    "dlq.event_type",
    "dlq.event_ms",
    "dlq.attempts",
    "dlq.sent",
    "dlq.record_key",
    "dlq.truncated_from_bytes",
];

const ID: &str = "6b1f3c52-9e0d-5a8b-9347-2d61c50e7f18";
const EVENT: &str =
    r#"{"event":"contact.created","timestamp":"2026-05-16T12:00:00Z","data":{"name":"Ann"}}"#;
const HISTORY: &str =
    r#"[{"at":"2026-05-16T11:59:00.000Z","duration_ms":3,"status":503,"result":"retry"}]"#;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Text made of `alphabet`, `len` long: cheaper to generate than a regex.
fn text(alphabet: &'static [u8], len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(alphabet), len)
        .prop_map(|bytes| String::from_utf8(bytes).unwrap_or_default())
}

const PRINTABLE: &[u8] = b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

/// A header value: garbage, or something a header of ours could hold.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let now = now_ms();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        any::<i64>().prop_map(|n| n.to_string().into_bytes()),
        // Times from a year and more before now to a year and more after.
        (-800i64..800).prop_map(move |days| (now + days * 86_400_000).to_string().into_bytes()),
        (-3i64..200).prop_map(|n| n.to_string().into_bytes()),
        Just(ID.as_bytes().to_vec()),
        text(b"0123456789abcdefABCDEF-", 30..40).prop_map(String::into_bytes),
        Just(b"[]".to_vec()),
        Just(HISTORY.as_bytes().to_vec()),
        // Attempt histories with odd fields.
        (
            text(PRINTABLE, 0..12),
            any::<i64>(),
            prop::option::of(any::<i32>()),
            text(b"abcdefghijklmnopqrstuvwxyz", 0..9),
        )
            .prop_map(|(at, ms, status, result)| {
                let status = status
                    .map(|s| format!(",\"status\":{s}"))
                    .unwrap_or_default();
                format!(
                    r#"[{{"at":{},"duration_ms":{ms}{status},"result":"{result}"}}]"#,
                    serde_json::to_string(&at).unwrap()
                )
                .into_bytes()
            }),
        prop::sample::select(vec![
            "ep",
            "",
            "delivery",
            "park",
            "decode",
            "unknown_endpoint",
            "damaged",
            "retries_exhausted",
            "events",
            "2026-05-16T12:00:00.000Z",
            "not a time",
            "2026-13-45T99:99:99Z",
            "+275760-09-13T00:00:00.000Z",
            "1970-01-01T00:00:00-23:59",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

type Headers = Vec<(String, Option<Vec<u8>>)>;

/// Headers drawn at random from `names` (and a few names of no meaning).
fn loose_headers(names: &'static [&'static str]) -> impl Strategy<Value = Headers> {
    let name = prop_oneof![
        4 => prop::sample::select(names).prop_map(str::to_owned),
        1 => text(PRINTABLE, 0..12),
    ];
    prop::collection::vec((name, prop::option::weighted(0.95, header_value())), 0..16)
}

/// A complete, valid set of headers, then up to three of them replaced,
/// dropped or given twice.
fn damaged_headers(valid: Headers) -> impl Strategy<Value = Headers> {
    let n = valid.len();
    let change = (0..n, 0u8..3, prop::option::weighted(0.9, header_value()));
    prop::collection::vec(change, 0..4).prop_map(move |changes| {
        let mut h = valid.clone();
        for (i, what, value) in changes {
            let i = i.min(h.len().saturating_sub(1));
            if h.is_empty() {
                break;
            }
            match what {
                0 => h[i].1 = value,
                1 => {
                    h.remove(i);
                }
                _ => {
                    let name = h[i].0.clone();
                    h.push((name, value));
                }
            }
        }
        h
    })
}

fn parked_headers() -> Headers {
    let now = now_ms().to_string();
    let due = (now_ms() + 5_000).to_string();
    [
        ("park.endpoint_id", "ep"),
        ("park.delivery_id", ID),
        ("park.reason", "retry"),
        ("park.due_ms", &due),
        ("park.not_before_ms", &due),
        ("park.attempts", "2"),
        ("park.idle_parks", "0"),
        ("park.first_attempt_ms", &now),
        ("park.history", HISTORY),
        ("park.event_ms", &now),
        ("park.source.topic", "events"),
        ("park.source.partition", "3"),
        ("park.source.offset", "42"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Some(v.as_bytes().to_vec())))
    .collect()
}

fn dead_letter_headers(stage: &str) -> Headers {
    let mut h: Headers = [
        ("dlq.stage", stage),
        ("dlq.reason", "unknown_endpoint"),
        ("dlq.source.topic", "events"),
        ("dlq.source.partition", "1"),
        ("dlq.source.offset", "9"),
        ("dlq.failed_at", "2026-05-16T12:00:00.000Z"),
        ("dlq.error", "it failed"),
        ("dlq.endpoint_id", "ep"),
        ("dlq.delivery_id", ID),
        ("dlq.event_type", "contact.created"),
        ("dlq.event_ms", "1778932000000"),
        ("dlq.attempts", HISTORY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Some(v.as_bytes().to_vec())))
    .collect();
    h.extend(parked_headers());
    h
}

fn payload() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        3 => Just(Some(EVENT.as_bytes().to_vec())),
        2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Some),
        1 => Just(None),
    ]
}

fn message(headers: &Headers, payload: Option<Vec<u8>>) -> OwnedMessage {
    let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: v.as_deref(),
        })
    });
    OwnedMessage::new(
        payload,
        None,
        "dispatcher.retry.5s".into(),
        Timestamp::NotAvailable,
        0,
        7,
        Some(headers),
    )
}

// ------------------------------------------------------------------ configs

const TOP_KEYS: &[&str] = &["kafka", "admin", "http", "pipeline", "routing", "endpoints"];
const ROUTING_KEYS: &[&str] = &["tenant_key", "tenant"];
const KAFKA_KEYS: &[&str] = &[
    "brokers",
    "group_id",
    "topics",
    "retry_topic",
    "retry_tiers",
    "dead_letter_topic",
    "options",
    "embedded_partitions",
];
const PIPELINE_KEYS: &[&str] = &[
    "max_events_in_flight",
    "commit_interval",
    "in_memory_retry_max",
    "paused_recheck",
    "shutdown_grace",
    "max_event_bytes",
    "dedup",
    "ttl",
    "max_entries",
];
const ENDPOINT_KEYS: &[&str] = &[
    "id",
    "transport",
    "url",
    "secret",
    "secrets",
    "send_secret_header",
    "events",
    "filter",
    "tenant",
    "tenant_key",
    "$or",
    "$and",
    "$in",
    "$gte",
    "$exists",
    "$prefix",
    "data.whatsapp_account_id",
    "timeout",
    "max_in_flight",
    "headers",
    "enabled",
    "paused",
    "queue_capacity",
    "rate_limit",
    "per_second",
    "burst",
    "adaptive_concurrency",
    "retry",
    "schedule",
    "max_age",
    "circuit_breaker",
    "failure_ratio",
    "min_requests",
    "window",
    "open_for",
    "half_open_probes",
    "topic",
    "key",
    "template",
    "header",
    "text",
];

// The documents are built as JSON values and written as JSON, which YAML
// reads as flow style: far cheaper to write than block YAML in a debug
// build, and the config reaches the same checks either way (block syntax
// gets its share from the arbitrary-text property).

/// Scalars a config holds, and near misses.
fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        (0u64..100).prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        prop::sample::select(vec![
            "5s",
            "1m 30s",
            "0s",
            "500ms",
            "4h",
            "-1s",
            "10 years",
            "1ms",
            "99999999999h",
            "https://hooks.acme.example/in",
            "http://127.0.0.1:9/x",
            "http://[::1]:9/x",
            "https://hooks.slack.com/services/T/B/x",
            "http://169.254.169.254/",
            "not a url",
            "https://u:p@hooks.acme.example/",
            "${VAR}",
            "${SECRET}",
            "${",
            "$${VAR}",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!",
            "message.*",
            "*",
            ".*",
            "http",
            "slack",
            "kafka",
            "custom",
            "127.0.0.1:9092",
            "0.0.0.0:9464",
            "",
            "{{event}} {{data.name}}",
            "{{",
            "data.whatsapp_account_id",
            "header:x-tenant",
            "key",
            "acme-crm",
        ])
        .prop_map(Json::from),
        text(PRINTABLE, 0..16).prop_map(Json::from),
        any::<String>().prop_map(Json::from),
    ]
}

/// A value of any shape, with keys a config has (and others).
fn value() -> impl Strategy<Value = Json> {
    let keys: Vec<&'static str> = [TOP_KEYS, KAFKA_KEYS, PIPELINE_KEYS, ENDPOINT_KEYS].concat();
    scalar().prop_recursive(3, 16, 4, move |inner| {
        let key = prop_oneof![
            6 => prop::sample::select(keys.clone()).prop_map(str::to_owned),
            1 => text(b"abcdefghijklmnopqrstuvwxyz._", 0..12),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec((key, inner), 0..4)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

/// A mapping whose keys come from `keys`.
fn section(keys: &'static [&'static str]) -> impl Strategy<Value = Json> {
    prop::collection::vec((prop::sample::select(keys), value()), 0..6)
        .prop_map(|kv| Json::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// A config shaped like the real one: its sections, with keys of theirs
/// holding values of any kind.
fn config_document() -> impl Strategy<Value = String> {
    let endpoint = prop_oneof![
        section(ENDPOINT_KEYS),
        // Mostly right, one key off.
        (prop::sample::select(ENDPOINT_KEYS), value()).prop_map(|(k, v)| {
            let mut m = serde_json::Map::new();
            m.insert("id".into(), "acme-crm".into());
            m.insert("url".into(), "https://hooks.acme.example/in".into());
            m.insert("events".into(), Json::from(vec!["*"]));
            m.insert(k.into(), v);
            Json::Object(m)
        }),
    ];
    (
        section(KAFKA_KEYS),
        section(PIPELINE_KEYS),
        prop::collection::vec(endpoint, 0..3),
        prop::option::of(value()),
        prop::option::of(section(ROUTING_KEYS)),
    )
        .prop_map(|(kafka, pipeline, endpoints, extra, routing)| {
            let mut top = serde_json::Map::new();
            top.insert("kafka".into(), kafka);
            top.insert("pipeline".into(), pipeline);
            top.insert("endpoints".into(), Json::Array(endpoints));
            if let Some(extra) = extra {
                top.insert("admin".into(), extra);
            }
            if let Some(routing) = routing {
                top.insert("routing".into(), routing);
            }
            Json::Object(top).to_string()
        })
}

/// `${NAME}` values the environment provides.
fn environment() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["VAR", "SECRET", "KAFKA_BROKERS"]).prop_map(str::to_owned),
        prop_oneof![
            Just(String::new()),
            Just("127.0.0.1:9092".to_owned()),
            Just("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
            Just("${VAR}".to_owned()),
            any::<String>(),
        ],
        0..3,
    )
}

fn load(text: &str, env: &BTreeMap<String, String>) -> Result<(), TestCaseError> {
    match Config::from_yaml(text, &|name| env.get(name).cloned()) {
        Ok(_) => Ok(()),
        Err(problems) => {
            prop_assert!(!problems.is_empty(), "refused without a reason");
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn park_parse_never_panics_on_loose_headers(
        headers in loose_headers(PARK_HEADERS),
        payload in payload(),
    ) {
        let _ = dispatcher::park::parse(&message(&headers, payload), 1 << 20);
    }

    #[test]
    fn park_parse_never_panics_on_damaged_parked_records(
        headers in damaged_headers(parked_headers()),
        payload in payload(),
    ) {
        let _ = dispatcher::park::parse(&message(&headers, payload), 1 << 20);
    }

    #[test]
    fn dead_letter_headers_never_panic(
        loose in loose_headers(DLQ_HEADERS),
        delivery in damaged_headers(dead_letter_headers("delivery")),
        parked in damaged_headers(dead_letter_headers("park")),
        payload in payload(),
    ) {
        for headers in [loose, delivery, parked] {
            let _ = dispatcher::replay::read_dead_letter(
                &message(&headers, payload.clone()),
                1 << 20,
            );
        }
    }

    #[test]
    fn config_loading_never_panics_on_arbitrary_text(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        yamlish in text(b"abcdefghijklmnopqrstuvwxyz_:- []{}\"'0123456789.,#&*!|>$\n", 0..200),
        env in environment(),
    ) {
        load(&String::from_utf8_lossy(&bytes), &env)?;
        load(&yamlish, &env)?;
    }

    #[test]
    fn config_loading_never_panics_on_config_shaped_documents(
        text in config_document(),
        env in environment(),
    ) {
        load(&text, &env)?;
    }
}

// ------------------------------------------------------------------ routing

/// Fields, values and types drawn from small sets, so that filters, data
/// and tenants meet often.
const FIELDS: &[&str] = &["a", "b", "t", "a.b", "a.t", "b.a.b"];
const VALUES: &[&str] = &["x", "y", "1", "2.5", "-3", "true", "null", "xy"];
const TYPES: &[&str] = &["a.b", "a.b.c", "b", "b.c", "c.a"];
const PATTERNS: &[&str] = &["*", "a.*", "a.b", "a.b.*", "b", "b.*", "c.a"];
const TENANT_KEYS: &[&str] = &["data.t", "data.a.t", "header:t", "key"];

/// Fewer cases than the parsing properties: each builds two routers.
fn routing_config() -> ProptestConfig {
    ProptestConfig {
        cases: config().cases / 10,
        ..config()
    }
}

/// A JSON value as text, objects written key by key so that keys repeat.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(VALUES).prop_map(|v| format!("{v:?}")),
        prop::sample::select(vec![
            "1",
            "2.5",
            "-3",
            "true",
            "null",
            "[1,\"x\"]",
            "\"a\\u0078\""
        ])
        .prop_map(str::to_owned),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop::collection::vec(
            (prop::sample::select(&["a", "b", "t", "z"][..]), inner),
            0..5,
        )
        .prop_map(|kv| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", body.join(","))
        })
    })
}

fn data_object() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (prop::sample::select(&["a", "b", "t", "z"][..]), json_text()),
        0..5,
    )
    .prop_map(|kv| {
        let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

/// One condition on a field, as JSON text.
fn condition() -> impl Strategy<Value = String> {
    let value = || prop::sample::select(VALUES).prop_map(|v| format!("{v:?}"));
    let operand = prop_oneof![
        value(),
        prop::collection::vec(value(), 1..3).prop_map(|v| format!("[{}]", v.join(","))),
        (
            prop::sample::select(&["$eq", "$neq", "$prefix", "$gt", "$gte", "$lt", "$lte"][..]),
            prop_oneof![
                value(),
                prop::sample::select(&["1", "-3", "2.5"][..]).prop_map(str::to_owned)
            ],
        )
            .prop_map(|(op, v)| format!("{{{op:?}:{v}}}")),
        any::<bool>().prop_map(|b| format!("{{\"$exists\":{b}}}")),
        prop::collection::vec(value(), 1..3).prop_map(|v| format!("{{\"$in\":[{}]}}", v.join(","))),
    ];
    (prop::sample::select(FIELDS), operand).prop_map(|(f, o)| format!("\"data.{f}\":{o}"))
}

/// A filter as JSON text: conditions, maybe an `$or` or `$and` of more.
fn filter_text() -> impl Strategy<Value = String> {
    let branch =
        prop::collection::vec(condition(), 1..3).prop_map(|c| format!("{{{}}}", c.join(",")));
    (
        prop::collection::vec(condition(), 0..3),
        prop::option::of((
            prop::sample::select(&["$or", "$and"][..]),
            prop::collection::vec(branch, 1..3),
        )),
    )
        .prop_map(|(mut conditions, combined)| {
            if let Some((op, branches)) = combined {
                conditions.push(format!("{op:?}:[{}]", branches.join(",")));
            }
            format!("{{{}}}", conditions.join(","))
        })
}

fn subscriber(lane: usize) -> impl Strategy<Value = Option<Subscriber>> {
    (
        prop::collection::vec(prop::sample::select(PATTERNS), 1..3),
        prop::option::of(prop::sample::select(VALUES)),
        filter_text(),
    )
        .prop_map(move |(patterns, tenant, filter)| {
            // Repeated keys in a generated filter are merged by the map:
            // what is compared is whatever parsed.
            let spec: BTreeMap<String, FilterValue> = serde_json::from_str(&filter).ok()?;
            Some(Subscriber {
                lane,
                tenant: tenant.map(|t| Tenant::new(t).expect("test tenants are valid")),
                subscription: Subscription {
                    patterns: patterns
                        .iter()
                        .map(|p| EventPattern::parse(p).expect("test patterns are valid"))
                        .collect(),
                    filter: Filter::parse(&spec).ok()?,
                },
            })
        })
}

fn subscribers() -> impl Strategy<Value = Vec<Subscriber>> {
    (0..24usize)
        .prop_flat_map(|n| (0..n).map(subscriber).collect::<Vec<_>>())
        .prop_map(|s| s.into_iter().flatten().collect())
}

proptest! {
    #![proptest_config(routing_config())]

    #[test]
    fn indexed_routing_matches_linear_routing(
        subscribers in subscribers(),
        tenant_key in prop::option::of(prop::sample::select(TENANT_KEYS)),
        events in prop::collection::vec((prop::sample::select(TYPES), data_object()), 1..4),
        key in prop::option::of(prop::sample::select(VALUES)),
        headers in prop::collection::vec(prop::sample::select(VALUES), 0..3),
    ) {
        let tenant_key = tenant_key.map(|k| TenantKey::parse(k).expect("test keys are valid"));
        let linear = LinearRouter::new(tenant_key.clone(), subscribers.clone());
        let mut router = Router::from_table(Arc::new(RouteTable::build(tenant_key.clone(), subscribers.clone())));
        // The same table with a value index wherever one endpoint is filed
        // under a field: few endpoints exercise it too.
        let mut indexing = Router::from_table(Arc::new(RouteTable::build_indexing(tenant_key, subscribers, 1)));
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|v| ("t", v.as_bytes())).collect();
        let record = RecordParts { key: key.map(str::as_bytes), headers: &headers };
        for (event_type, data) in events {
            let raw = format!(r#"{{"event":"{event_type}","data":{data}}}"#);
            let source = transports::SourceRef { topic: "t".into(), partition: 0, offset: 0 };
            let Ok(event) = transports::Event::decode(raw.into(), source, Some(0), 1 << 20) else {
                continue;
            };
            let mut want = Vec::new();
            linear.route(&event, &record, |lane| want.push(lane));
            want.sort_unstable();
            let mut got = Vec::new();
            router.route_record(&event, &record, |lane| got.push(lane));
            prop_assert_eq!(&got, &want, "{}", String::from_utf8_lossy(event.data()));
            let mut got = Vec::new();
            indexing.route_record(&event, &record, |lane| got.push(lane));
            prop_assert_eq!(&got, &want, "indexed: {}", String::from_utf8_lossy(event.data()));
        }
    }
}
