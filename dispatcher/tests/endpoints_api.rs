//! The management API's `/v1/endpoints` against running dispatchers over an
//! embedded Kafka, with real HTTP requests on the real listener: endpoints
//! created, changed, paused, deleted and replayed at run time; every
//! refusal leaves the store as it was; secrets never show; a rotated key
//! still opens what the old one sealed.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use dispatcher::app::Running;
use dispatcher::seed::SeedEvents;
use serde_json::{json, Value};
use support::kafka::{header, produce, read_all};
use support::sink::{Behaviour, Sink};
use support::{start, wait_until, API_TOKEN, SECRET_A, SECRET_B};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every log line of this test binary, to look for secrets in.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,dispatcher=debug")
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An answer of the API.
#[derive(Debug)]
struct Reply {
    status: u16,
    etag: Option<String>,
    body: Value,
}

/// One request to the API with the test token: (method, path, JSON body,
/// extra header lines).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &[&str],
) -> Reply {
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-dispatcher-api: 1\r\nauthorization: Bearer {API_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    raw(addr, head.as_bytes(), body.as_bytes()).await
}

/// Send a request as bytes (the body may be refused before it is all sent)
/// and read the answer.
async fn raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let etag = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("etag: ")
            .map(|_| l[6..].trim().to_owned())
    });
    Reply {
        status,
        etag,
        body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    }
}

/// Wait until `running`'s replica runs a lane for `id` (a create's answer
/// waits for that, for a few seconds at most; a loaded machine can take
/// longer).
async fn wait_running(addr: SocketAddr, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = call(addr, "GET", &format!("/v1/endpoints/{id}/stats"), None, &[]).await;
        if stats.body["running"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not running after 60 s: {:?}",
            stats.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn api(running: &Running) -> SocketAddr {
    running.api_addr.expect("the API is on")
}

fn endpoint_json(id: &str, url: &str, extra: Value) -> String {
    let mut e = json!({"id": id, "url": url, "events": ["contact.created"]});
    if let (Value::Object(e), Value::Object(extra)) = (&mut e, extra) {
        e.extend(extra);
    }
    e.to_string()
}

async fn produce_contacts(bootstrap: &str, seed: &mut SeedEvents, n: usize) -> Vec<Vec<u8>> {
    let values: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            seed.event("contact.created", chrono::Utc::now().timestamp_millis())
                .1
        })
        .collect();
    produce(bootstrap, "events", &values).await;
    values
}

const PIPELINE: &str = "  paused_recheck: 1s\n";

/// The test config with one encryption key (key 1).
fn keyed(bootstrap: &str, group: &str, endpoints: &str) -> dispatcher::config::Config {
    with_keys(
        &support::config_yaml(bootstrap, group, PIPELINE, endpoints),
        &[1],
    )
}

/// A file endpoint that matches nothing produced, so the file is valid.
fn file_endpoint(sink: &Sink) -> String {
    format!(
        "  - id: file-ep\n    url: \"{}\"\n    events: [conversation.closed]\n",
        sink.url("/file")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_created_through_the_api_receives_deliveries_and_keeps_its_secret() {
    let logs = logs();
    let kafka = support::embedded_kafka(2);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(keyed(&bootstrap, "api-create", &file_endpoint(&sink))).await;
    let addr = api(&running);

    let body = endpoint_json(
        "api-1",
        &sink.url("/api-1"),
        json!({"secret": SECRET_A, "headers": {"X-Api-Key": "key-0123456789abcdef-very-secret", "X-Tenant": "t1"}, "secret_headers": ["X-Api-Key"]}),
    );
    let created = call(addr, "POST", "/v1/endpoints", Some(&body), &[]).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.etag.as_deref(), Some("\"1\""));
    assert_eq!(created.body["result"], "created");
    wait_running(addr, "api-1").await;

    let mut seed = SeedEvents::new(7);
    let values = produce_contacts(&bootstrap, &mut seed, 5).await;
    wait_until(
        Duration::from_secs(30),
        "deliveries to the new endpoint",
        || sink.data_at("/api-1").len() == 5,
    )
    .await;
    let produced: BTreeSet<String> = values.iter().map(|v| support::raw_data(v)).collect();
    assert_eq!(sink.data_at("/api-1"), produced);
    for r in sink.received().iter().filter(|r| r.path == "/api-1") {
        support::verify_signature(SECRET_A, r);
        assert_eq!(
            r.header("x-api-key"),
            Some("key-0123456789abcdef-very-secret")
        );
    }

    // GET shows hints; the list shows both sources; a rotation hands out
    // a new secret once, and both keys sign until the rotation ends.
    let got = call(addr, "GET", "/v1/endpoints/api-1", None, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body["endpoint"]["secret"],
        json!({"hint": "whsec_…LaSw"})
    );
    assert_eq!(
        got.body["endpoint"]["headers"]["X-Api-Key"]["hint"],
        "…cret"
    );
    assert_eq!(got.body["endpoint"]["headers"]["X-Tenant"], "t1");
    let list = call(addr, "GET", "/v1/endpoints", None, &[]).await;
    let sources: Vec<(String, String)> = list.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("api-1".into(), "api".into()),
            ("file-ep".into(), "file".into())
        ]
    );

    let rotated = call(addr, "POST", "/v1/endpoints/api-1/rotate-secret", None, &[]).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("whsec_"));
    assert_eq!(
        rotated.body["endpoint"]["endpoint"]["secrets"],
        json!([{"hint": "whsec_…LaSw"}])
    );
    let before = sink.received().len();
    produce_contacts(&bootstrap, &mut seed, 1).await;
    wait_until(
        Duration::from_secs(30),
        "a delivery after the rotation",
        || sink.received().len() > before,
    )
    .await;
    let last = sink.received().pop().unwrap();
    support::verify_signature(&new_secret, &last);
    support::verify_signature(SECRET_A, &last);

    // The secrets appear in no GET, no metric, no log line, and not in the
    // topic either (sealed).
    let everything = [
        call(addr, "GET", "/v1/endpoints", None, &[])
            .await
            .body
            .to_string(),
        call(addr, "GET", "/v1/endpoints/api-1", None, &[])
            .await
            .body
            .to_string(),
        call(addr, "GET", "/endpoints", None, &[])
            .await
            .body
            .to_string(),
        support::admin(running.admin_addr, "GET", "/metrics")
            .await
            .1,
        String::from_utf8_lossy(&logs.lock().unwrap()).into_owned(),
    ];
    let records = read_all(
        &bootstrap,
        support::ENDPOINTS_TOPIC,
        3,
        Duration::from_secs(5),
    );
    let topic: Vec<String> = records
        .iter()
        .map(|m| {
            String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap_or_default()).into_owned()
        })
        .collect();
    let secret_key = SECRET_A.trim_start_matches("whsec_");
    let new_key = new_secret.trim_start_matches("whsec_");
    for (i, text) in everything.iter().chain(topic.iter()).enumerate() {
        for secret in [secret_key, new_key, "key-0123456789abcdef"] {
            assert!(!text.contains(secret), "a secret shows in output {i}");
        }
    }
    assert!(topic.iter().any(|t| t.contains("$encrypted")), "{topic:?}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_change_nothing() {
    let kafka = support::embedded_kafka(1);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(keyed(&bootstrap, "api-refusals", &file_endpoint(&sink))).await;
    let addr = api(&running);
    let good = endpoint_json("acme", &sink.url("/acme"), json!({"secret": SECRET_A}));
    assert_eq!(
        call(addr, "POST", "/v1/endpoints", Some(&good), &[])
            .await
            .status,
        201
    );
    let store = running.store.clone();
    let snapshot = || {
        (
            store.list(),
            store.version("acme"),
            store.version("file-ep"),
        )
    };
    let before = snapshot();

    let oversized = format!(
        "{{\"id\": \"acme\", \"url\": \"https://a.example/\", \"events\": [\"*\"], \"filter\": {{\"x\": \"{}\"}}}}",
        "x".repeat(300 * 1024)
    );
    // (what, method, path, body, extra headers, expected status)
    type Case<'a> = (&'a str, String, String, Option<String>, Vec<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "PUT".into(),
            "/v1/endpoints/acme".into(),
            Some("{\"id\": \"acme\",".into()),
            vec![],
            400,
        ),
        (
            "unknown key",
            "PUT".into(),
            "/v1/endpoints/acme".into(),
            Some(endpoint_json(
                "acme",
                &sink.url("/x"),
                json!({"colour": "blue"}),
            )),
            vec![],
            422,
        ),
        (
            "misspelt shared key",
            "PATCH".into(),
            "/v1/endpoints/acme".into(),
            Some("{\"evnts\": [\"*\"]}".into()),
            vec![],
            422,
        ),
        (
            "invalid value",
            "PATCH".into(),
            "/v1/endpoints/acme".into(),
            Some("{\"timeout\": \"forever\"}".into()),
            vec![],
            422,
        ),
        (
            "stale If-Match",
            "PATCH".into(),
            "/v1/endpoints/acme".into(),
            Some("{\"url\": \"https://b.example/\"}".into()),
            vec!["if-match: \"7\""],
            409,
        ),
        (
            "stale If-Match delete",
            "DELETE".into(),
            "/v1/endpoints/acme".into(),
            None,
            vec!["if-match: \"7\""],
            409,
        ),
        (
            "stale If-Match pause",
            "POST".into(),
            "/v1/endpoints/acme/pause".into(),
            None,
            vec!["if-match: \"0\""],
            409,
        ),
        (
            "oversized body",
            "PUT".into(),
            "/v1/endpoints/acme".into(),
            Some(oversized),
            vec![],
            413,
        ),
        (
            "a file endpoint replaced",
            "PUT".into(),
            "/v1/endpoints/file-ep".into(),
            Some(endpoint_json("file-ep", &sink.url("/y"), json!({}))),
            vec![],
            409,
        ),
        (
            "a file endpoint patched",
            "PATCH".into(),
            "/v1/endpoints/file-ep".into(),
            Some("{\"events\": [\"*\"]}".into()),
            vec![],
            409,
        ),
        (
            "a file endpoint deleted",
            "DELETE".into(),
            "/v1/endpoints/file-ep".into(),
            None,
            vec![],
            409,
        ),
        (
            "a file id created",
            "POST".into(),
            "/v1/endpoints".into(),
            Some(endpoint_json("file-ep", &sink.url("/y"), json!({}))),
            vec![],
            409,
        ),
        (
            "an existing id created",
            "POST".into(),
            "/v1/endpoints".into(),
            Some(good.clone()),
            vec![],
            409,
        ),
        (
            "a renamed endpoint",
            "PUT".into(),
            "/v1/endpoints/acme".into(),
            Some(endpoint_json("other", &sink.url("/y"), json!({}))),
            vec![],
            422,
        ),
        (
            "a sealed value sent",
            "PATCH".into(),
            "/v1/endpoints/acme".into(),
            Some("{\"secret\": {\"$encrypted\": \"v1:00000000:AAAA\"}}".into()),
            vec![],
            422,
        ),
        (
            "a hint with nothing to keep",
            "PATCH".into(),
            "/v1/endpoints/acme".into(),
            Some("{\"shared_secret\": {\"hint\": \"…\"}}".into()),
            vec![],
            422,
        ),
        (
            "not JSON",
            "PUT".into(),
            "/v1/endpoints/acme".into(),
            Some("id=acme".into()),
            vec!["content-type: application/x-www-form-urlencoded"],
            415,
        ),
        (
            "a disabled-only resume of an enabled one is fine, but a bad id is 404",
            "POST".into(),
            "/v1/endpoints/nope/pause".into(),
            None,
            vec![],
            404,
        ),
    ];
    for (what, method, path, body, extra, expected) in cases {
        let reply = if what == "not JSON" {
            let body = body.unwrap();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-dispatcher-api: 1\r\nauthorization: Bearer {API_TOKEN}\r\n{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                extra[0],
                body.len()
            );
            raw(addr, head.as_bytes(), body.as_bytes()).await
        } else {
            call(addr, &method, &path, body.as_deref(), &extra).await
        };
        assert_eq!(reply.status, expected, "{what}: {:?}", reply.body);
        assert!(reply.body["error"].is_string(), "{what}: {:?}", reply.body);
        assert_eq!(snapshot(), before, "{what} changed the store");
    }
    // The problems name the key path, relative to the endpoint.
    let unknown = call(
        addr,
        "PUT",
        "/v1/endpoints/acme",
        Some(&endpoint_json(
            "acme",
            &sink.url("/x"),
            json!({"colour": "blue"}),
        )),
        &[],
    )
    .await;
    assert_eq!(
        unknown.body["problems"][0]["path"], "colour",
        "{:?}",
        unknown.body
    );
    let invalid = call(
        addr,
        "PATCH",
        "/v1/endpoints/acme",
        Some("{\"timeout\": \"forever\"}"),
        &[],
    )
    .await;
    assert_eq!(
        invalid.body["problems"][0]["path"], "timeout",
        "{:?}",
        invalid.body
    );

    // No token, a wrong one: 401, nothing changed.
    for auth in [
        "",
        "authorization: Bearer wrong-token-wrong-token-wrong-token\r\n",
    ] {
        let head = format!(
            "DELETE /v1/endpoints/acme HTTP/1.1\r\nhost: 127.0.0.1\r\nx-dispatcher-api: 1\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(raw(addr, head.as_bytes(), b"").await.status, 401);
        assert_eq!(snapshot(), before);
    }

    // The same write with the right If-Match goes through; written again,
    // it changes nothing and keeps the version (idempotent).
    let patch = "{\"url\": \"https://b.example/hook\"}";
    let ok = call(
        addr,
        "PATCH",
        "/v1/endpoints/acme",
        Some(patch),
        &["if-match: \"1\""],
    )
    .await;
    assert_eq!(
        (ok.status, ok.etag.as_deref()),
        (200, Some("\"2\"")),
        "{:?}",
        ok.body
    );
    assert_eq!(
        ok.body["changes"],
        json!([{"path": "url", "kind": "changed", "secret": false}])
    );
    let again = call(
        addr,
        "PATCH",
        "/v1/endpoints/acme",
        Some(patch),
        &["if-match: \"2\""],
    )
    .await;
    assert_eq!(
        (again.status, again.body["result"].as_str()),
        (200, Some("unchanged"))
    );
    assert_eq!(running.store.version("acme"), 2);
    // The secret survived the patch.
    let shown = call(addr, "GET", "/v1/endpoints/acme", None, &[]).await;
    assert_eq!(shown.body["endpoint"]["secret"]["hint"], "whsec_…LaSw");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_changed_mid_flow_loses_nothing() {
    let kafka = support::embedded_kafka(2);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(keyed(&bootstrap, "api-url", &file_endpoint(&sink))).await;
    let addr = api(&running);
    let body = endpoint_json("moving", &sink.url("/before"), json!({}));
    assert_eq!(
        call(addr, "POST", "/v1/endpoints", Some(&body), &[])
            .await
            .status,
        201
    );
    wait_running(addr, "moving").await;

    let mut seed = SeedEvents::new(11);
    let mut produced = BTreeSet::new();
    for round in 0..10 {
        for v in produce_contacts(&bootstrap, &mut seed, 20).await {
            produced.insert(support::raw_data(&v));
        }
        if round == 4 {
            let patch = format!("{{\"url\": \"{}\"}}", sink.url("/after"));
            let r = call(addr, "PATCH", "/v1/endpoints/moving", Some(&patch), &[]).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut got = sink.data_at("/before");
        got.extend(sink.data_at("/after"));
        if got == produced {
            break;
        }
        if Instant::now() > deadline {
            let text = support::admin(running.admin_addr, "GET", "/metrics")
                .await
                .1;
            let moving: Vec<&str> = text
                .lines()
                .filter(|l| {
                    (l.contains("moving")
                        || l.contains("events_")
                        || l.contains("committed")
                        || l.contains("in_flight")
                        || l.contains("spill")
                        || l.contains("backlog"))
                        && !l.ends_with(" 0")
                        && !l.contains("bucket")
                        && !l.starts_with('#')
                })
                .collect();
            panic!(
                "{} of {} events delivered (before {}, after {}); metrics: {moving:#?}",
                got.len(),
                produced.len(),
                sink.data_at("/before").len(),
                sink.data_at("/after").len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!sink.data_at("/after").is_empty(), "the new URL is used");
    // One delivery id per event, whichever URL it went to.
    let mut ids = std::collections::HashMap::<String, BTreeSet<String>>::new();
    for r in sink.received() {
        ids.entry(support::raw_data(&r.body))
            .or_default()
            .insert(r.header("x-webhook-delivery-id").unwrap().to_owned());
    }
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    running.shutdown().await.unwrap();
}

/// The source routes each record with the endpoints as they are when it
/// handles it, not as they were when it last looked: with nothing else to
/// wake it (commits an hour apart), the first record after an endpoint
/// starts running reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_record_after_an_endpoint_runs_reaches_it() {
    support::init_logging();
    let kafka = support::embedded_kafka(1);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let mut config = keyed(&bootstrap, "api-first", &file_endpoint(&sink));
    config.pipeline.commit_interval = Duration::from_secs(3600);
    let running = start(config).await;
    let addr = api(&running);
    // Let the source settle into waiting for records.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let body = endpoint_json("first", &sink.url("/first"), json!({}));
    let created = call(addr, "POST", "/v1/endpoints", Some(&body), &[]).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    wait_running(addr, "first").await;
    let mut seed = SeedEvents::new(31);
    let values = produce_contacts(&bootstrap, &mut seed, 1).await;
    wait_until(
        Duration::from_secs(30),
        "the first record's delivery",
        || sink.data_at("/first").len() == 1,
    )
    .await;
    assert_eq!(
        sink.data_at("/first"),
        BTreeSet::from([support::raw_data(&values[0])])
    );
    assert_eq!(
        running
            .metrics
            .endpoint_counters("first")
            .map(|c| c.delivered.get()),
        Some(1)
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_endpoints_work_is_dead_lettered_and_replayed_after_it_is_recreated() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(keyed(&bootstrap, "api-delete", &file_endpoint(&sink))).await;
    let addr = api(&running);
    // Paused, so its deliveries wait in Kafka: pending work.
    let body = endpoint_json("doomed", &sink.url("/doomed"), json!({"paused": true}));
    let created = call(addr, "POST", "/v1/endpoints", Some(&body), &[]).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["endpoint"]["paused"], true);
    wait_running(addr, "doomed").await;
    let mut seed = SeedEvents::new(23);
    let values = produce_contacts(&bootstrap, &mut seed, 4).await;
    let m = running.metrics.clone();
    // A paused lane takes nothing: its deliveries wait in the spill topic.
    wait_until(
        Duration::from_secs(60),
        "deliveries set aside while paused",
        || m.endpoint_counters("doomed").map_or(0, |c| c.spilled.get()) >= 4,
    )
    .await;
    assert_eq!(sink.count(), 0, "a paused endpoint gets nothing");

    assert_eq!(
        call(addr, "DELETE", "/v1/endpoints/doomed", None, &[])
            .await
            .status,
        204
    );
    assert_eq!(
        call(addr, "GET", "/v1/endpoints/doomed", None, &[])
            .await
            .status,
        404
    );
    let ids_of = |letters: &[rdkafka::message::OwnedMessage]| -> BTreeSet<String> {
        letters
            .iter()
            .filter(|l| header(l, "dlq.reason") == Some("endpoint_deleted"))
            .filter_map(|l| header(l, "dlq.delivery_id").or_else(|| header(l, "park.delivery_id")))
            .map(str::to_owned)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut letters = Vec::new();
    while ids_of(&letters).len() < 4 && Instant::now() < deadline {
        letters = read_all(&bootstrap, "dispatcher.dlq", 1000, Duration::from_secs(2));
    }
    let dead = ids_of(&letters);
    assert_eq!(
        dead.len(),
        4,
        "every pending delivery dead-lettered as endpoint_deleted"
    );

    // Recreated (once this replica has let the old lane go) and replayed:
    // the same deliveries, under their original ids.
    let body = endpoint_json("doomed", &sink.url("/doomed"), json!({}));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = call(addr, "POST", "/v1/endpoints", Some(&body), &[]).await;
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 409, "{:?}", r.body);
        assert!(
            Instant::now() < deadline,
            "recreation refused for a minute: {:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dry = call(
        addr,
        "POST",
        "/v1/endpoints/doomed/replay",
        Some("{\"dry_run\": true, \"since\": \"1h\"}"),
        &[],
    )
    .await;
    assert_eq!(dry.status, 200, "{:?}", dry.body);
    assert_eq!(dry.body["replayed"], 0);
    assert!(dry.body["matched"].as_u64().unwrap() >= 4, "{:?}", dry.body);
    let replayed = call(
        addr,
        "POST",
        "/v1/endpoints/doomed/replay",
        Some("{\"event\": \"contact.created\"}"),
        &[],
    )
    .await;
    assert_eq!(replayed.status, 200, "{:?}", replayed.body);
    assert!(
        replayed.body["replayed"].as_u64().unwrap() >= 4,
        "{:?}",
        replayed.body
    );
    wait_until(
        Duration::from_secs(60),
        "replayed deliveries arrive",
        || sink.data_at("/doomed").len() == 4,
    )
    .await;
    let ids: BTreeSet<String> = sink
        .received()
        .iter()
        .map(|r| r.header("x-webhook-delivery-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, dead, "replay keeps the original delivery ids");
    let produced: BTreeSet<String> = values.iter().map(|v| support::raw_data(v)).collect();
    assert_eq!(sink.data_at("/doomed"), produced);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_replica_holds_on_the_other_and_after_restarts() {
    let kafka = support::embedded_kafka(2);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: shared\n    url: \"{}\"\n    events: [contact.created]\n",
        sink.url("/shared")
    );
    let cfg = || keyed(&bootstrap, "api-pause", &endpoints);
    let a = start(cfg()).await;
    let b = start(cfg()).await;
    // The old unversioned route, now on top of the store.
    let (status, body) = support::api(&a, "POST", "/endpoints/shared/pause").await;
    assert_eq!(status, 200, "{body}");
    let paused_on = |r: &Running| {
        r.metrics
            .endpoint_counters("shared")
            .map_or(0, |c| c.paused.get())
            == 1
    };
    wait_until(Duration::from_secs(10), "both replicas paused", || {
        paused_on(&a) && paused_on(&b)
    })
    .await;
    let on_b = call(api(&b), "GET", "/v1/endpoints/shared", None, &[]).await;
    assert_eq!(
        (on_b.body["paused"].as_bool(), on_b.body["source"].as_str()),
        (Some(true), Some("file"))
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // Both restart: still paused, nothing is sent.
    let a = start(cfg()).await;
    let b = start(cfg()).await;
    assert!(paused_on(&a) && paused_on(&b));
    let mut seed = SeedEvents::new(5);
    produce_contacts(&bootstrap, &mut seed, 3).await;
    let m = a.metrics.clone();
    let n = b.metrics.clone();
    wait_until(
        Duration::from_secs(60),
        "deliveries set aside while paused",
        || {
            m.endpoint_counters("shared").map_or(0, |c| c.spilled.get())
                + n.endpoint_counters("shared").map_or(0, |c| c.spilled.get())
                >= 3
        },
    )
    .await;
    assert_eq!(sink.count(), 0);
    let resumed = call(api(&b), "POST", "/v1/endpoints/shared/resume", None, &[]).await;
    assert_eq!(
        (resumed.status, resumed.body["paused"].as_bool()),
        (200, Some(false))
    );
    wait_until(
        Duration::from_secs(60),
        "deliveries after the resume",
        || sink.data_at("/shared").len() == 3,
    )
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

fn key_b64(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

fn with_keys(yaml: &str, keys: &[u8]) -> dispatcher::config::Config {
    let list: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", key_b64(*k)))
        .collect();
    let yaml = format!(
        "{yaml}\nsecrets:\n  encryption_keys: [{}]\n",
        list.join(", ")
    );
    dispatcher::config::Config::from_yaml(&yaml, &|_| None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_opens_secrets_after_a_key_rotation() {
    let kafka = support::embedded_kafka(1);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let yaml = support::config_yaml(&bootstrap, "api-keys", PIPELINE, &file_endpoint(&sink));
    let mut seed = SeedEvents::new(3);
    let delivered_with = |secret: &'static str, n: usize| {
        let sink = &sink;
        async move {
            wait_until(Duration::from_secs(60), "a signed delivery", || {
                sink.data_at("/rot").len() >= n
            })
            .await;
            support::verify_signature(secret, &sink.received().pop().unwrap());
        }
    };

    // Sealed with key 1.
    let one = start(with_keys(&yaml, &[1])).await;
    let body = endpoint_json("rot", &sink.url("/rot"), json!({"secret": SECRET_B}));
    assert_eq!(
        call(api(&one), "POST", "/v1/endpoints", Some(&body), &[])
            .await
            .status,
        201
    );
    wait_running(api(&one), "rot").await;
    produce_contacts(&bootstrap, &mut seed, 1).await;
    delivered_with(SECRET_B, 1).await;
    one.shutdown().await.unwrap();

    // Key 2 first, key 1 still listed: opens what key 1 sealed; a write
    // seals again with key 2.
    let two = start(with_keys(&yaml, &[2, 1])).await;
    produce_contacts(&bootstrap, &mut seed, 1).await;
    delivered_with(SECRET_B, 2).await;
    let before = call(api(&two), "GET", "/v1/endpoints/rot", None, &[]).await;
    let patch = call(api(&two), "PATCH", "/v1/endpoints/rot", Some("{}"), &[]).await;
    assert_eq!(patch.status, 200, "{:?}", patch.body);
    assert_eq!(
        patch.body["result"], "updated",
        "an empty patch seals again with the new key"
    );
    assert_ne!(
        patch.body["endpoint"]["sealed_with"],
        before.body["sealed_with"]
    );
    let again = call(api(&two), "PATCH", "/v1/endpoints/rot", Some("{}"), &[]).await;
    assert_eq!(again.body["result"], "unchanged", "{:?}", again.body);
    two.shutdown().await.unwrap();

    // Key 1 gone: still opens.
    let three = start(with_keys(&yaml, &[2])).await;
    produce_contacts(&bootstrap, &mut seed, 1).await;
    delivered_with(SECRET_B, 3).await;
    three.shutdown().await.unwrap();

    // A replica without the key refuses the endpoint, counts it, says why.
    let stranger = start(with_keys(&yaml, &[9])).await;
    assert!(stranger.metrics.store_bad_records.get() >= 1);
    let shown = call(api(&stranger), "GET", "/v1/endpoints/rot", None, &[]).await;
    assert!(
        shown.body["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not among secrets.encryption_keys"),
        "{:?}",
        shown.body
    );
    stranger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_through_every_endpoint_once_with_filters() {
    let kafka = support::embedded_kafka(1);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(keyed(&bootstrap, "api-list", &file_endpoint(&sink))).await;
    let addr = api(&running);
    for i in 0..23 {
        let events = if i % 2 == 0 {
            json!(["message.*"])
        } else {
            json!(["contact.created"])
        };
        let body = json!({"id": format!("ep-{i:02}"), "url": sink.url("/x"), "events": events})
            .to_string();
        assert_eq!(
            call(addr, "POST", "/v1/endpoints", Some(&body), &[])
                .await
                .status,
            201
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/endpoints?limit=10&cursor={c}"),
            None => "/v1/endpoints?limit=10".to_owned(),
        };
        let page = call(addr, "GET", &path, None, &[]).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        pages += 1;
        for e in page.body["endpoints"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..23).map(|i| format!("ep-{i:02}")).collect();
    expected.push("file-ep".into());
    assert_eq!(seen, expected, "every endpoint once, in id order");
    assert_eq!(pages, 3);

    let ids = |reply: Reply| -> Vec<String> {
        reply.body["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(call(addr, "GET", "/v1/endpoints?source=file", None, &[]).await),
        ["file-ep"]
    );
    assert_eq!(
        ids(call(addr, "GET", "/v1/endpoints?id_prefix=ep-1", None, &[]).await).len(),
        10
    );
    let messages = ids(call(addr, "GET", "/v1/endpoints?event=message.read", None, &[]).await);
    assert_eq!(messages.len(), 12, "{messages:?}");
    assert_eq!(
        call(addr, "GET", "/v1/endpoints?limit=0", None, &[])
            .await
            .status,
        400
    );
    assert_eq!(
        call(addr, "GET", "/v1/endpoints?cursor=%21", None, &[])
            .await
            .status,
        400
    );
    assert_eq!(
        call(addr, "GET", "/v1/endpoints?colour=blue", None, &[])
            .await
            .status,
        400
    );

    // Stats say whose numbers they are.
    let stats = call(addr, "GET", "/v1/endpoints/ep-00/stats", None, &[]).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["scope"], "this replica");
    assert_eq!(stats.body["breaker"], "closed");
    // The document describes every route.
    let doc = call(addr, "GET", "/v1/openapi.json", None, &[]).await;
    assert!(doc.body["paths"]["/v1/endpoints/{id}/rotate-secret"].is_object());
    running.shutdown().await.unwrap();
}

/// `dispatcher endpoints ...` against the running API: (success, stdout
/// and stderr).
async fn cli(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"));
    command
        .arg("endpoints")
        .args(args)
        .env("DISPATCHER_API_URL", format!("http://{addr}"))
        .env("DISPATCHER_API_TOKEN", API_TOKEN);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_applies_a_file_idempotently_and_shows_the_diff() {
    let kafka = support::embedded_kafka(1);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(keyed(&bootstrap, "api-cli", &file_endpoint(&sink))).await;
    let addr = api(&running);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    let write = |url: &str| {
        std::fs::write(
            &file,
            format!(
                "endpoints:\n  - id: cli-a\n    url: \"{url}\"\n    events: [contact.created]\n    secret: ${{CLI_SECRET}}\n  - id: cli-b\n    url: \"{url}\"\n    events: [\"message.*\"]\n"
            ),
        )
        .unwrap();
    };
    let path = file.to_str().unwrap().to_owned();
    let secret = [("CLI_SECRET", SECRET_A)];
    write(&sink.url("/one"));

    let (ok, out) = cli(addr, &["apply", "-f", &path, "--dry-run"], &secret).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("endpoint cli-a: would be created")
            && out.contains("+ secret: (secret added)"),
        "{out}"
    );
    assert!(
        running.store.get("cli-a").is_none(),
        "a dry run writes nothing"
    );

    let (ok, out) = cli(addr, &["apply", "-f", &path], &secret).await;
    assert!(
        ok && out.contains("endpoint cli-a: created") && out.contains("endpoint cli-b: created"),
        "{out}"
    );
    let (ok, out) = cli(addr, &["apply", "-f", &path], &secret).await;
    assert!(
        ok && out.contains("endpoint cli-a: unchanged")
            && out.contains("endpoint cli-b: unchanged"),
        "{out}"
    );
    assert_eq!(
        running.store.version("cli-a"),
        1,
        "applying again writes nothing"
    );

    write(&sink.url("/two"));
    let (ok, out) = cli(addr, &["apply", "-f", &path], &secret).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "~ url: \"{}\" -> \"{}\"",
            sink.url("/one"),
            sink.url("/two")
        )),
        "{out}"
    );
    assert_eq!(running.store.version("cli-a"), 2);
    let (ok, out) = cli(addr, &["apply", "-f", &path], &[("CLI_SECRET", SECRET_B)]).await;
    assert!(ok && out.contains("~ secret: (secret changed)"), "{out}");
    assert!(
        !out.contains(SECRET_B.trim_start_matches("whsec_")),
        "{out}"
    );

    let (ok, out) = cli(addr, &["list"], &[]).await;
    assert!(
        ok && out.contains("cli-a") && out.contains("file-ep"),
        "{out}"
    );
    let (ok, out) = cli(addr, &["pause", "cli-a"], &[]).await;
    assert!(ok, "{out}");
    assert!(running.store.get("cli-a").unwrap().state.paused);
    let (ok, out) = cli(addr, &["get", "cli-a"], &[]).await;
    assert!(
        ok && out.contains("\"paused\": true")
            && !out.contains(SECRET_B.trim_start_matches("whsec_")),
        "{out}"
    );
    let (ok, out) = cli(addr, &["resume", "cli-a"], &[]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(addr, &["delete", "cli-b"], &[]).await;
    assert!(ok, "{out}");
    assert!(running.store.get("cli-b").is_none());

    // Refusals come back with the key path, and a wrong token fails.
    std::fs::write(
        &file,
        "id: cli-c\nurl: https://c.example/\nevents: [\"*\"]\ncolour: blue\n",
    )
    .unwrap();
    let (ok, out) = cli(addr, &["apply", "-f", &path], &[]).await;
    assert!(!ok && out.contains("colour"), "{out}");
    let (ok, out) = cli(
        addr,
        &["list", "--token", "wrong-token-wrong-token-wrong-token"],
        &[],
    )
    .await;
    assert!(!ok && out.contains("401"), "{out}");
    running.shutdown().await.unwrap();
}

/// A contact.created event of tenant `account` (none: no tenant field),
/// marked with `marker` in its data.
fn tenant_event(seed: &mut SeedEvents, account: Option<&str>, marker: &str) -> Vec<u8> {
    let raw = seed
        .event("contact.created", chrono::Utc::now().timestamp_millis())
        .1;
    let mut event: Value = serde_json::from_slice(&raw).unwrap();
    let data = event["data"].as_object_mut().unwrap();
    data.remove("whatsapp_account_id");
    if let Some(account) = account {
        data.insert("whatsapp_account_id".into(), account.into());
    }
    data.insert("marker".into(), marker.into());
    serde_json::to_vec(&event).unwrap()
}

/// The markers of what `path` received.
fn markers_at(sink: &Sink, path: &str) -> BTreeSet<String> {
    sink.received()
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| {
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            v["data"]["marker"].as_str().map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_receive_their_own_events_and_pause_and_resume_as_one() {
    let kafka = support::embedded_kafka(1);
    let bootstrap = kafka.bootstrap().to_owned();
    let sink = Sink::start(Behaviour::Ok).await;
    let yaml = support::config_yaml(&bootstrap, "api-tenants", PIPELINE, &file_endpoint(&sink))
        + "routing:\n  tenant_key: data.whatsapp_account_id\n";
    let running = start(with_keys(&yaml, &[1])).await;
    let addr = api(&running);
    for (id, tenant) in [
        ("acme-1", Some("acme")),
        ("acme-2", Some("acme")),
        ("globex-1", Some("globex")),
        ("platform", None),
    ] {
        let extra = match tenant {
            Some(t) => json!({ "tenant": t }),
            None => json!({}),
        };
        let body = endpoint_json(id, &sink.url(&format!("/{id}")), extra);
        let reply = call(addr, "POST", "/v1/endpoints", Some(&body), &[]).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        wait_running(addr, id).await;
    }
    let ids = |reply: Reply| -> Vec<String> {
        reply.body["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(call(addr, "GET", "/v1/endpoints?tenant=acme", None, &[]).await),
        ["acme-1", "acme-2"]
    );
    assert_eq!(
        ids(call(addr, "GET", "/v1/endpoints?tenant=nobody", None, &[]).await),
        Vec::<String>::new()
    );
    let mut seed = SeedEvents::new(7);
    produce(
        &bootstrap,
        "events",
        &[
            tenant_event(&mut seed, Some("acme"), "a1"),
            tenant_event(&mut seed, Some("globex"), "g1"),
            tenant_event(&mut seed, None, "n1"),
        ],
    )
    .await;
    let set =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| s.to_string()).collect() };
    wait_until(
        Duration::from_secs(60),
        "every first event delivered",
        || {
            markers_at(&sink, "/platform").len() == 3
                && markers_at(&sink, "/acme-2").len() == 1
                && markers_at(&sink, "/globex-1").len() == 1
                && markers_at(&sink, "/acme-1").len() == 1
        },
    )
    .await;
    assert_eq!(markers_at(&sink, "/acme-1"), set(&["a1"]));
    assert_eq!(markers_at(&sink, "/acme-2"), set(&["a1"]));
    assert_eq!(markers_at(&sink, "/globex-1"), set(&["g1"]));
    assert_eq!(markers_at(&sink, "/platform"), set(&["a1", "g1", "n1"]));

    // Pausing a tenant pauses its endpoints only, through the store.
    let reply = call(addr, "POST", "/v1/tenants/acme/pause", None, &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["tenant"], "acme");
    assert_eq!(ids(reply), ["acme-1", "acme-2"]);
    for (id, paused) in [("acme-1", true), ("acme-2", true), ("globex-1", false)] {
        let view = call(addr, "GET", &format!("/v1/endpoints/{id}"), None, &[]).await;
        assert_eq!(view.body["paused"], paused, "{id}");
    }
    assert_eq!(
        ids(call(
            addr,
            "GET",
            "/v1/endpoints?tenant=acme&paused=true",
            None,
            &[]
        )
        .await),
        ["acme-1", "acme-2"]
    );
    assert_eq!(
        call(addr, "POST", "/v1/tenants/nobody/pause", None, &[])
            .await
            .status,
        404
    );
    produce(
        &bootstrap,
        "events",
        &[
            tenant_event(&mut seed, Some("acme"), "a2"),
            tenant_event(&mut seed, Some("globex"), "g2"),
        ],
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "globex and the platform served",
        || markers_at(&sink, "/globex-1").len() == 2 && markers_at(&sink, "/platform").len() == 5,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(markers_at(&sink, "/acme-1"), set(&["a1"]), "paused");

    // Resumed, the tenant's endpoints get what waited.
    let reply = call(addr, "POST", "/v1/tenants/acme/resume", None, &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(reply.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["paused"] == false));
    wait_until(
        Duration::from_secs(60),
        "acme served after its resume",
        || markers_at(&sink, "/acme-1").len() == 2 && markers_at(&sink, "/acme-2").len() == 2,
    )
    .await;
    assert_eq!(markers_at(&sink, "/acme-1"), set(&["a1", "a2"]));

    // The CLI lists and switches a tenant too.
    let (ok, out) = cli(addr, &["list", "--tenant", "globex"], &[]).await;
    assert!(
        ok && out.contains("globex-1") && !out.contains("acme-1"),
        "{out}"
    );
    let (ok, out) = cli(addr, &["pause", "--tenant", "globex"], &[]).await;
    assert!(
        ok && out.contains("tenant globex: 1 endpoints paused"),
        "{out}"
    );
    let view = call(addr, "GET", "/v1/endpoints/globex-1", None, &[]).await;
    assert_eq!(view.body["paused"], true);
    running.shutdown().await.unwrap();
}
