use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn problems(yaml: &str) -> Vec<Problem> {
    Config::from_yaml(yaml, &no_env).expect_err("config should be refused")
}

/// The problem reported at `path`, or a panic listing what was reported.
fn at<'a>(problems: &'a [Problem], path: &str) -> &'a Problem {
    problems
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem reported at {path}; got {problems:#?}"))
}

const GOOD_ENDPOINT: &str = r#"
  - id: acme-crm
    transport: http
    url: "https://hooks.acme.example/whatsapp"
    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    shared_secret: "a-separate-shared-value"
    events: ["message.*", "contact.created"]
    filter: { "data.whatsapp_account_id": "acct-1" }
    timeout: 10s
    max_in_flight: 32
"#;

#[test]
fn the_documented_example_is_valid_with_defaults_filled_in() {
    let yaml = format!(
        r#"
kafka:
  brokers: "127.0.0.1:9092"
  group_id: dispatcher
  topics: [events]
  options: {{ security.protocol: plaintext, linger.ms: 5 }}
  dead_letter_topic: dispatcher.dlq
  retry_topic: dispatcher.retry
admin:
  listen: "127.0.0.1:9464"
http:
  allow_private_networks: false
endpoints:{GOOD_ENDPOINT}"#
    );
    let c = Config::from_yaml(&yaml, &no_env).unwrap();
    assert_eq!(c.kafka.brokers.as_deref(), Some("127.0.0.1:9092"));
    assert_eq!(c.kafka.options["linger.ms"], Scalar("5".into()));
    let ep = &c.endpoints[0];
    assert_eq!(ep.timeout, Duration::from_secs(10));
    assert!(ep.enabled);
    assert_eq!(ep.settings["shared_secret"], "a-separate-shared-value");
    assert_eq!(ep.settings["url"], "https://hooks.acme.example/whatsapp");
    assert_eq!(c.pipeline.max_events_in_flight, 10_000);
}

#[test]
fn an_empty_kafka_section_means_the_embedded_broker() {
    let c = Config::from_yaml(&format!("endpoints:{GOOD_ENDPOINT}"), &no_env).unwrap();
    assert_eq!(c.kafka.brokers, None);
    assert_eq!(c.kafka.topics, vec!["events".to_string()]);
}

#[test]
fn every_bad_key_is_named_and_all_are_reported_at_once() {
    let p = problems(
        r#"
kafka:
  group_id: ""
  topics: [events, "bad topic"]
  dead_letter_topic: events
  options: { enable.auto.commit: true, group.id: x }
admin:
  listen: "not an address"
pipeline:
  in_memory_retry_max: 0s
  commit_interval: soon
endpoints:
  - id: ok-one
    url: "https://a.example/x"
    events: ["*"]
  - id: "bad id!"
    url: "ftp://a.example/x"
    events: ["message*"]
    timeout: 0s
    max_in_flight: 0
  - id: ok-one
    transport: carrier-pigeon
    url: "https://b.example/x"
    events: []
    filter: { whatsapp_account_id: x }
  - id: typo
    url: "https://c.example/x"
    evnets: ["*"]
  - id: secretive
    url: "https://d.example/x"
    secret: "whsec_not base64!"
    events: ["*"]
surprise: true
"#,
    );
    for (path, words) in [
        ("kafka.group_id", "must not be empty"),
        ("kafka.topics[1]", "may only contain"),
        ("kafka.dead_letter_topic", "also a source topic"),
        ("kafka.options.enable.auto.commit", "must stay false"),
        ("kafka.options.group.id", "kafka.group_id"),
        ("admin.listen", "invalid socket address"),
        ("pipeline.commit_interval", ""),
        ("endpoints[1].id", "not a valid id"),
        ("endpoints[1].url", ""),
        ("endpoints[1].events[0]", "not an event pattern"),
        ("endpoints[1].timeout", "between"),
        ("endpoints[1].max_in_flight", "between 1 and 10000"),
        ("endpoints[2].id", "used by another endpoint"),
        (
            "endpoints[2].transport",
            "unknown transport `carrier-pigeon`",
        ),
        ("endpoints[2].events", "at least one"),
        ("endpoints[2].filter.whatsapp_account_id", "below data"),
        ("endpoints[3].evnets", "did you mean `events`?"),
        ("endpoints[4].secret", "whsec"),
        ("surprise", "unknown key"),
    ] {
        let problem = at(&p, path);
        assert!(
            problem.message.contains(words),
            "{path}: {:?} lacks {words:?}",
            problem.message
        );
    }
    // pipeline failed to parse as a whole (commit_interval), so its other
    // key is not judged; everything else is.
    assert_eq!(p.len(), 20, "{p:#?}");
}

#[test]
fn type_errors_name_the_nested_key() {
    let p = problems("endpoints:\n  - id: a\n    url: https://a.example/\n    events: [\"*\"]\n    max_in_flight: lots\n");
    assert!(at(&p, "endpoints[0].max_in_flight")
        .message
        .contains("invalid value: a string"));
    let p = problems("kafka:\n  topics: events\nendpoints:\n  - {id: a, url: 'https://a.example/', events: ['*']}\n");
    assert!(at(&p, "kafka.topics")
        .message
        .contains("expected a sequence"));
}

#[test]
fn private_addresses_are_refused_unless_allowed() {
    let ep = "endpoints:\n  - id: local\n    url: http://127.0.0.1:8080/hook\n    events: ['*']\n";
    let p = problems(ep);
    assert!(
        at(&p, "endpoints[0].url").message.contains("loopback"),
        "{p:?}"
    );
    let allowed = format!("http:\n  allow_private_networks: true\n{ep}");
    assert!(Config::from_yaml(&allowed, &no_env).is_ok());
    let listed = format!("http:\n  allowed_networks: [127.0.0.0/8]\n{ep}");
    assert!(Config::from_yaml(&listed, &no_env).is_ok());
}

#[test]
fn environment_variables_fill_values_and_missing_ones_are_named() {
    let yaml = "kafka:\n  brokers: ${BROKERS}\nendpoints:\n  - id: a\n    url: https://a.example/\n    secret: ${SECRET_A}\n    events: ['*']\n    max_in_flight: ${INFLIGHT:-8}\n";
    let env = |name: &str| match name {
        "BROKERS" => Some("kafka-0:9092,kafka-1:9092".to_owned()),
        "SECRET_A" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
        _ => None,
    };
    let c = Config::from_yaml(yaml, &env).unwrap();
    assert_eq!(
        c.kafka.brokers.as_deref(),
        Some("kafka-0:9092,kafka-1:9092")
    );
    assert_eq!(c.endpoints[0].max_in_flight, 8);
    let p = problems(yaml);
    assert!(at(&p, "kafka.brokers")
        .message
        .contains("BROKERS is not set"));
    assert!(at(&p, "endpoints[0].secret")
        .message
        .contains("SECRET_A is not set"));
}

#[test]
fn yaml_syntax_errors_give_a_position() {
    let p = problems("kafka:\n  topics: [events\nendpoints: []\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("line"), "{}", p[0].message);
}

#[test]
fn errors_display_with_file_and_keys() {
    let e = ConfigError {
        file: "conf/dispatcher.yaml".into(),
        problems: vec![
            Problem::new("endpoints[0].url", "required for transport http"),
            Problem::new("surprise", "unknown key"),
        ],
    };
    assert_eq!(
        e.to_string(),
        "conf/dispatcher.yaml: 2 problems\n  endpoints[0].url: required for transport http\n  surprise: unknown key"
    );
}

#[test]
fn empty_endpoint_lists_and_secrets_are_refused() {
    // Endpoints may all come from the endpoint store.
    Config::from_yaml("endpoints: []\n", &no_env).unwrap();
    Config::from_yaml("kafka: {}\n", &no_env).unwrap();
    let all_off =
        "endpoints:\n  - {id: a, url: 'https://a.example/', events: ['*'], enabled: false}\n";
    assert!(at(&problems(all_off), "endpoints")
        .message
        .contains("every endpoint is disabled"));
    let empty_secret =
        "endpoints:\n  - {id: a, url: 'https://a.example/', events: ['*'], secret: ''}\n";
    assert!(at(&problems(empty_secret), "endpoints[0].secret")
        .message
        .contains("empty"));
    let empty_brokers = format!("kafka:\n  brokers: ${{B}}\nendpoints:{GOOD_ENDPOINT}");
    let p = Config::from_yaml(&empty_brokers, &|_| Some(String::new())).unwrap_err();
    assert!(
        at(&p, "kafka.brokers")
            .message
            .contains("must not be empty"),
        "an empty variable never means the embedded broker"
    );
}

/// Finding 3 of the security review: a secret that reads as a number was
/// turned into one by interpolation, and serde's type error then printed it.
#[test]
fn interpolated_secrets_keep_their_text_and_errors_never_quote_values() {
    let env = |name: &str| match name {
        "NUMERIC" => Some("1234567890123".to_owned()),
        "EXP" => Some("1e5".to_owned()),
        "AUTH" => Some("Bearer topsecret".to_owned()),
        "INFLIGHT" => Some("8".to_owned()),
        _ => None,
    };
    let ok = "endpoints:\n  - id: a\n    url: https://a.example/\n    events: ['*']\n    secret: ${NUMERIC}\n    secrets: ['${EXP}']\n    headers: {Authorization: '${AUTH}'}\n    max_in_flight: ${INFLIGHT}\n";
    let c = Config::from_yaml(ok, &env).unwrap();
    let ep = &c.endpoints[0];
    assert_eq!(ep.settings["secret"], "1234567890123");
    assert_eq!(ep.settings["secrets"][0], "1e5", "not 100000.0");
    assert_eq!(ep.max_in_flight, 8, "a number field still reads a number");

    // The same values where they do not fit: the error names the kind only.
    let bad = "endpoints:\n  - id: a\n    url: https://a.example/\n    events: ['*']\n    secret: 1234567890123\n  - id: b\n    url: https://b.example/\n    events: ['*']\n    enabled: ${AUTH}\n  - id: c\n    url: https://c.example/\n    events: ['*']\n    headers: ${AUTH}\n";
    let p = Config::from_yaml(bad, &env).unwrap_err();
    let text = format!("{p:?}");
    assert!(!text.contains("1234567890123"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
    assert!(
        at(&p, "endpoints[0].secret").message.contains("a number"),
        "{p:?}"
    );
    assert!(
        at(&p, "endpoints[1].enabled").message.contains("a string"),
        "{p:?}"
    );
    assert!(
        at(&p, "endpoints[2].headers")
            .message
            .contains("a string, expected a map"),
        "{p:?}"
    );
}

/// Finding 7 of the security review: `Debug` of the config must not print
/// secrets (a `{config:?}` in a log line would leak every one of them).
#[test]
fn debug_output_of_the_config_shows_no_secret() {
    let yaml = format!(
        "kafka:\n  options: {{ sasl.password: hunter2-kafka }}\napi:\n  tokens: ['{}']\nendpoints:{GOOD_ENDPOINT}  - id: k\n    url: https://k.example/\n    events: ['*']\n    headers: {{ Authorization: 'Bearer tok-tok-tok' }}\n",
        "t".repeat(40)
    );
    let c = Config::from_yaml(&yaml, &no_env).unwrap();
    let text = format!("{c:?}");
    for secret in [
        "hunter2",
        "MfKQ9r8",
        "a-separate-shared",
        "tok-tok",
        "tttttttt",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(
        text.contains("sasl.password") && text.contains("acme-crm"),
        "{text}"
    );
}

/// Finding 2: the dispatcher's own topics cannot be an endpoint's target,
/// and `kafka.options` refuses what loads code.
#[test]
fn kafka_endpoints_cannot_feed_the_pipeline_and_options_cannot_load_code() {
    let p = problems(
        "kafka:\n  topics: [events]\n  options: { plugin.library.paths: /tmp/evil.so, sasl.kerberos.kinit.cmd: 'touch /tmp/x' }\nendpoints:\n  - { id: loop, transport: kafka, topic: events, events: ['*'] }\n  - { id: dlq, transport: kafka, topic: dispatcher.dlq, events: ['*'] }\n  - { id: retry, transport: kafka, topic: dispatcher.retry.5s, events: ['*'] }\n  - { id: far, transport: kafka, topic: t, brokers: 'evil.example:9092', events: ['*'] }\n  - { id: spill, transport: kafka, topic: dispatcher.spill, events: ['*'] }\n",
    );
    assert!(
        at(&p, "endpoints[0].topic")
            .message
            .contains("source topic"),
        "{p:?}"
    );
    assert!(
        at(&p, "endpoints[1].topic").message.contains("dead-letter"),
        "{p:?}"
    );
    assert!(
        at(&p, "endpoints[2].topic").message.contains("retry"),
        "{p:?}"
    );
    assert!(
        at(&p, "endpoints[3].brokers")
            .message
            .contains("allowed_endpoint_brokers"),
        "{p:?}"
    );
    assert!(
        at(&p, "endpoints[4].topic").message.contains("own topics"),
        "the spill topic: {p:?}"
    );
    assert!(
        at(&p, "kafka.options.plugin.library.paths")
            .message
            .contains("load code"),
        "{p:?}"
    );
    assert!(
        at(&p, "kafka.options.sasl.kerberos.kinit.cmd")
            .message
            .contains("load code"),
        "{p:?}"
    );
    let allowed = "kafka:\n  allowed_endpoint_brokers: ['analytics-kafka.example:9093']\nendpoints:\n  - { id: far, transport: kafka, topic: t, brokers: 'analytics-kafka.example:9093', events: ['*'] }\n";
    Config::from_yaml(allowed, &no_env).unwrap();
}

/// Finding 5: `http.allowed_networks` opens exactly its networks; the old
/// boolean is an alias of "everything but link-local and metadata".
#[test]
fn allowed_networks_are_checked_and_metadata_stays_refused() {
    let ep = |url: &str| format!("endpoints:\n  - id: e\n    url: {url}\n    events: ['*']\n");
    let with = |net: &str, url: &str| format!("http:\n  allowed_networks: [{net}]\n{}", ep(url));
    Config::from_yaml(&with("10.20.0.0/16", "http://10.20.1.2/hook"), &no_env).unwrap();
    Config::from_yaml(&with("10.20.1.2", "http://10.20.1.2/hook"), &no_env).unwrap();
    assert!(at(
        &problems(&with("10.20.0.0/16", "http://10.21.0.1/")),
        "endpoints[0].url"
    )
    .message
    .contains("private"));
    assert!(at(
        &problems(&with("not-a-net", "https://a.example/")),
        "http.allowed_networks[0]"
    )
    .message
    .contains("CIDR"));
    for url in [
        "http://169.254.169.254/",
        "http://192.0.0.192/",
        "http://[fd20:ce::254]/",
        "http://169.254.170.23/",
        "http://[fd00:ec2::23]/",
        "http://169.254.0.23/",
    ] {
        let all = format!(
            "http:\n  allow_private_networks: true\n  allowed_networks: ['0.0.0.0/0', '::/0']\n{}",
            ep(url)
        );
        assert!(
            at(&problems(&all), "endpoints[0].url")
                .message
                .contains("not allowed"),
            "{url}"
        );
    }
}

/// The store's and the API's endpoints are checked exactly as the file's,
/// with key paths relative to the endpoint.
#[test]
fn an_endpoint_as_json_is_checked_like_one_in_the_file() {
    let config = Config::from_yaml(
        "endpoints:\n  - { id: a, url: 'https://a.example/', events: ['*'] }\n",
        &no_env,
    )
    .unwrap();
    let registry = Registry::builtin();
    let json = |v: serde_json::Value| v.as_object().unwrap().clone();
    let ok = config
        .endpoint_from_json(
            &json(serde_json::json!({"id": "crm", "url": "https://crm.example/hook", "events": ["message.*"], "timeout": "3s"})),
            &registry,
        )
        .unwrap();
    assert_eq!(ok.id, "crm");
    assert_eq!(ok.timeout, std::time::Duration::from_secs(3));
    let problems = config
        .endpoint_from_json(
            &json(serde_json::json!({"id": "bad id", "url": "ftp://x", "events": [], "timeot": "3s", "max_in_flight": 0})),
            &registry,
        )
        .unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in ["id", "events", "timeot", "max_in_flight", "url"] {
        assert!(paths.contains(&expected), "{expected} in {problems:?}");
    }
}

#[test]
fn filter_operators_are_read_and_every_mistake_has_its_key_path() {
    let ok = r#"
endpoints:
  - id: ops
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter:
      data.whatsapp_account_id: acct-1
      data.channel: [whatsapp, instagram]
      data.error.code: {$in: [131047, 131026]}
      data.status: {$neq: failed}
      data.contact_id: {$exists: true}
      data.total: {$gte: 100, $lt: 1000}
      data.from: {$prefix: "+91"}
      $or:
        - data.type: text
        - {data.is_ai: true, data.agent_id: {$exists: false}}
      $and:
        - data.sent: {$gt: -1.5}
"#;
    let c = Config::from_yaml(ok, &no_env).unwrap();
    assert!(!Filter::parse(&c.endpoints[0].filter).unwrap().is_empty());

    let p = problems(
        r#"
endpoints:
  - id: bad
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter:
      data.total: {$gt: lots}
      $or:
        - data.type: text
        - data.status: {$exist: true}
  - id: bad2
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter:
      data.status: {$in: []}
  - id: bad3
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter:
      $or: [{}]
  - id: bad4
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter:
      data.x: {$exists: maybe}
  - id: bad5
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter:
      $gt: 5
  - id: bad6
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter:
      data.x: null
"#,
    );
    // Problems stop at the first mistake of each filter, in key order.
    let first = at(&p, "endpoints[0].filter.$or[1].data.status.$exist");
    assert!(first.message.contains("did you mean `$exists`"), "{first}");
    assert!(at(&p, "endpoints[1].filter.data.status.$in")
        .message
        .contains("matches nothing"));
    assert!(at(&p, "endpoints[2].filter.$or[0]")
        .message
        .contains("empty filter"));
    assert!(at(&p, "endpoints[3].filter.data.x.$exists")
        .message
        .contains("true or false"));
    assert!(at(&p, "endpoints[4].filter.$gt")
        .message
        .contains("under a field key"));
    assert!(at(&p, "endpoints[5].filter.data.x")
        .message
        .contains("found nothing"));

    let p = problems(
        r#"
endpoints:
  - id: bad
    url: "https://hooks.acme.example/in"
    events: ["*"]
    filter: {data.total: {$gt: lots}}
"#,
    );
    assert!(at(&p, "endpoints[0].filter.data.total.$gt")
        .message
        .contains("takes a number"));
}

#[test]
fn tenants_and_the_tenant_key_are_checked() {
    let ok = r#"
routing:
  tenant_key: data.whatsapp_account_id
endpoints:
  - id: acme
    tenant: "104996122399160"
    url: "https://hooks.acme.example/in"
    events: ["*"]
  - id: platform
    url: "https://hooks.acme.example/all"
    events: ["*"]
"#;
    let c = Config::from_yaml(ok, &no_env).unwrap();
    assert_eq!(
        c.routing.tenant_key.as_deref(),
        Some("data.whatsapp_account_id")
    );
    assert_eq!(c.endpoints[0].tenant.as_deref(), Some("104996122399160"));
    assert_eq!(c.endpoints[1].tenant, None);
    for key in ["key", "header:X-Tenant-Id"] {
        let yaml = ok.replace("data.whatsapp_account_id", key);
        Config::from_yaml(&yaml, &no_env).unwrap();
    }

    let p = problems(
        r#"
routing:
  tenant_key: whatsapp_account_id
  tenant_keys: x
endpoints:
  - id: acme
    tenant: ""
    url: "https://hooks.acme.example/in"
    events: ["*"]
"#,
    );
    assert!(at(&p, "routing.tenant_keys")
        .message
        .contains("unknown field"));

    let p = problems(
        r#"
routing:
  tenant_key: whatsapp_account_id
endpoints:
  - id: acme
    tenant: ""
    url: "https://hooks.acme.example/in"
    events: ["*"]
  - id: numeric
    tenant: 104996122399160
    url: "https://hooks.acme.example/in"
    events: ["*"]
"#,
    );
    assert!(at(&p, "routing.tenant_key")
        .message
        .contains("not a tenant key"));
    assert!(at(&p, "endpoints[0].tenant").message.contains("1 to 256"));
    assert!(at(&p, "endpoints[1].tenant")
        .message
        .contains("expected a string"));

    let p = problems(
        r#"
endpoints:
  - id: acme
    tenant: acct-1
    url: "https://hooks.acme.example/in"
    events: ["*"]
"#,
    );
    assert!(at(&p, "endpoints[0].tenant")
        .message
        .contains("routing.tenant_key is not"));
}

#[test]
fn the_metrics_section_and_an_endpoints_detail_are_read_and_checked() {
    let ok = r#"
metrics:
  endpoint_series: all
  endpoint_series_max: 20
  linger: 5m
endpoints:
  - id: acme
    metrics: detailed
    url: "https://hooks.acme.example/in"
    events: ["*"]
"#;
    let c = Config::from_yaml(ok, &no_env).unwrap();
    assert_eq!(
        c.metrics,
        crate::metrics::MetricsConfig {
            endpoint_series: crate::metrics::EndpointSeries::All,
            endpoint_series_max: 20,
            linger: Duration::from_secs(300),
        }
    );
    assert_eq!(
        c.endpoints[0].metrics,
        crate::metrics::EndpointDetail::Detailed
    );
    let defaults = Config::from_yaml(
        "endpoints:\n  - id: a\n    url: \"https://a.example/\"\n    events: [\"*\"]\n",
        &no_env,
    )
    .unwrap();
    assert_eq!(defaults.metrics, crate::metrics::MetricsConfig::default());
    assert_eq!(
        defaults.endpoints[0].metrics,
        crate::metrics::EndpointDetail::Auto
    );

    let p = problems(
        r#"
metrics:
  linger: 10s
  endpoint_series_max: 200000
endpoints:
  - id: acme
    metrics: verbose
    url: "https://hooks.acme.example/in"
    events: ["*"]
"#,
    );
    assert!(
        at(&p, "metrics.linger").message.contains("at least 1m"),
        "{p:?}"
    );
    assert!(
        at(&p, "metrics.endpoint_series_max")
            .message
            .contains("100000"),
        "{p:?}"
    );
    assert!(
        at(&p, "endpoints[0].metrics").message.contains("detailed"),
        "{p:?}"
    );
    let p = problems("metrics:\n  endpoint_series: some\n");
    assert!(
        at(&p, "metrics.endpoint_series").message.contains("all"),
        "{p:?}"
    );
}

#[test]
fn stall_grace_is_bounded() {
    let yaml = |grace: &str| {
        format!("kafka:\n  brokers: \"k:9092\"\npipeline:\n  stall_grace: {grace}\nendpoints:{GOOD_ENDPOINT}")
    };
    let p = problems(&yaml("0"));
    assert_eq!(
        at(&p, "pipeline.stall_grace").message,
        "must be between 1 and 1000"
    );
    let c = Config::from_yaml(&yaml("5"), &no_env).expect("a grace of 5 is valid");
    assert_eq!(c.pipeline.stall_grace, 5);
}

#[test]
fn ordering_is_read_and_its_mistakes_are_named() {
    let endpoint = |ordering: &str| {
        format!("endpoints:\n  - id: a\n    url: https://a.example/\n    events: [\"*\"]\n    ordering: {ordering}\n")
    };
    let config = Config::from_yaml(
        &endpoint("{key: data.conversation.contact_id, on_expired: dead_letter_rest}"),
        &no_env,
    )
    .expect("valid");
    let ordering = config.endpoints[0]
        .ordering
        .as_ref()
        .expect("ordering read");
    assert_eq!(ordering.key, "data.conversation.contact_id");
    assert_eq!(ordering.on_expired, crate::lane::OnExpired::DeadLetterRest);
    let config = Config::from_yaml(&endpoint("{key: data.contact_id}"), &no_env).expect("valid");
    assert_eq!(
        config.endpoints[0].ordering.as_ref().unwrap().on_expired,
        crate::lane::OnExpired::Skip,
        "skip by default"
    );
    // The record key, as routing.tenant_key spells it.
    let config = Config::from_yaml(&endpoint("{key: key}"), &no_env).expect("valid");
    assert_eq!(config.endpoints[0].ordering.as_ref().unwrap().key, "key");
    // Neither below data nor the record key: both forms are named.
    for wrong in ["contact_id", "header:contact", "record.key"] {
        let p = problems(&endpoint(&format!("{{key: \"{wrong}\"}}")));
        let m = &at(&p, "endpoints[0].ordering.key").message;
        assert!(
            m.contains(wrong) && m.contains("below data") && m.contains("`key`"),
            "{m}"
        );
    }
    let p = problems(&endpoint("{key: data.a.b.c.d.e.f.g.h.i}"));
    assert!(at(&p, "endpoints[0].ordering.key")
        .message
        .contains("at most 8"));
    let p = problems(&endpoint("{key: data.contact_id, on_expired: wait}"));
    let m = &at(&p, "endpoints[0].ordering.on_expired").message;
    assert!(m.contains("skip") && m.contains("dead_letter_rest"), "{m}");
    let p = problems(&endpoint("{key: data.contact_id, keys: x}"));
    assert!(at(&p, "endpoints[0].ordering.keys")
        .message
        .contains("unknown field"));
    let p = problems(&endpoint("{on_expired: skip}"));
    assert!(at(&p, "endpoints[0].ordering")
        .message
        .contains("missing field `key`"));
}
