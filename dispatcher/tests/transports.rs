//! Transports through the whole pipeline: a custom transport registered by
//! the embedding program (no change to the dispatcher), and the Kafka
//! transport forwarding events to another topic.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatcher::config::Config;
use dispatcher::seed::SeedEvents;
use rdkafka::message::Message;
use serde::Deserialize;
use support::kafka::{header, produce, read_all};
use support::{config_yaml, raw_data, wait_until};
use transports::registry::parse_settings;
use transports::{
    BoxFuture, BuildContext, Delivery, Outcome, Registry, SettingsError, Transport,
    TransportFactory,
};

/// (label, delivery id, body) of every delivery a recorder was given.
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Records every delivery it is given, in memory.
struct Recorder {
    label: String,
    seen: Seen,
    cheap: bool,
    counts: Arc<Counts>,
}

/// Recorders built, and alive now.
#[derive(Default)]
struct Counts {
    built: AtomicUsize,
    alive: AtomicUsize,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.counts.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Transport for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }

    fn rebuilt_cheaply(&self) -> bool {
        self.cheap
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.seen.lock().unwrap().push((
                self.label.clone(),
                delivery.id.to_string(),
                delivery.body.to_vec(),
            ));
            Outcome::Delivered { status: None }
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecorderSettings {
    label: String,
    #[serde(default)]
    cheap: bool,
}

/// Recorders that share `Seen`; each label's are counted in `counts`.
#[derive(Default)]
struct RecorderFactory(Seen, Mutex<Vec<(String, Arc<Counts>)>>);

impl RecorderFactory {
    fn counts(&self, label: &str) -> Arc<Counts> {
        let mut all = self.1.lock().unwrap();
        if let Some((_, c)) = all.iter().find(|(l, _)| l == label) {
            return c.clone();
        }
        let c = Arc::new(Counts::default());
        all.push((label.to_owned(), c.clone()));
        c
    }
}

impl TransportFactory for RecorderFactory {
    fn type_name(&self) -> &'static str {
        "recorder"
    }

    fn build(
        &self,
        settings: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        let s: RecorderSettings = parse_settings(settings)?;
        let counts = self.counts(&s.label);
        counts.built.fetch_add(1, Ordering::SeqCst);
        counts.alive.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(Recorder {
            label: s.label,
            seen: self.0.clone(),
            cheap: s.cheap,
            counts,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_transport_registers_and_receives_deliveries() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::builtin();
    registry.register(Box::new(RecorderFactory(seen.clone(), Mutex::default())));

    let endpoints = "  - id: custom\n    transport: recorder\n    label: audit-log\n    events: [\"contact.*\"]\n";
    let yaml = config_yaml(kafka.bootstrap(), "custom", "", endpoints);
    // The built-in registry does not know it, and says which ones it knows.
    let refused = Config::from_yaml(&yaml, &|_| None).unwrap_err();
    assert!(refused
        .iter()
        .any(|p| p.path == "endpoints[0].transport" && p.message.contains("recorder")));
    // Its own settings are checked by its own factory.
    let typo = yaml.replace("label:", "lable:");
    let refused = Config::from_yaml_with(&typo, &|_| None, &registry).unwrap_err();
    assert!(
        refused
            .iter()
            .any(|p| p.path.starts_with("endpoints[0]") && p.message.contains("lable")),
        "{refused:?}"
    );

    let config = Config::from_yaml_with(&yaml, &|_| None, &registry).unwrap();
    let running = dispatcher::app::start_with(config, &registry)
        .await
        .unwrap();
    let mut seeds = SeedEvents::new(40);
    let values: Vec<Vec<u8>> = (0..10)
        .map(|_| seeds.event("contact.created", 1_700_000_000_000).1)
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;
    wait_until(
        Duration::from_secs(30),
        "the custom transport got every event",
        || seen.lock().unwrap().len() == 10,
    )
    .await;

    let got = seen.lock().unwrap().clone();
    assert!(got.iter().all(|(label, _, _)| label == "audit-log"));
    let data: BTreeSet<String> = got.iter().map(|(_, _, body)| raw_data(body)).collect();
    assert_eq!(data, values.iter().map(|v| raw_data(v)).collect());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_transport_forwards_events_keyed_by_a_data_field() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    kafka.create_topic("crm.contacts", 3).unwrap();
    let endpoints = "  - id: to-crm\n    transport: kafka\n    topic: crm.contacts\n    key: data.contact_id\n    events: [\"contact.*\"]\n";
    let running =
        support::start(support::config(kafka.bootstrap(), "forward", "", endpoints)).await;
    let mut seeds = SeedEvents::new(41);
    let values: Vec<Vec<u8>> = (0..20)
        .map(|_| seeds.event("contact.updated", 1_700_000_000_000).1)
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;

    let forwarded = read_all(
        kafka.bootstrap(),
        "crm.contacts",
        20,
        Duration::from_secs(30),
    );
    assert_eq!(forwarded.len(), 20);
    for m in &forwarded {
        let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(body["webhook_id"], "to-crm");
        let contact = body["data"]["contact_id"].as_str().unwrap();
        assert_eq!(
            m.key(),
            Some(contact.as_bytes()),
            "keyed by data.contact_id"
        );
        assert_eq!(header(m, "x-webhook-event"), Some("contact.updated"));
        assert!(header(m, "x-webhook-delivery-id").is_some());
    }
    let m = running.metrics.clone();
    wait_until(Duration::from_secs(10), "counted as delivered", || {
        m.endpoint_counters("to-crm")
            .is_some_and(|c| c.delivered.get() == 20)
    })
    .await;
    running.shutdown().await.unwrap();
}

/// A transport that is rebuilt cheaply lives only while its lane has work,
/// so 100,000 idle endpoints hold none; one that is not (a token, a
/// producer) is built once and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheaply_rebuilt_transport_is_held_only_while_its_lane_works() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let seen: Seen = Arc::default();
    let factory = Arc::new(RecorderFactory(seen.clone(), Mutex::default()));
    let (cheap, kept) = (factory.counts("cheap"), factory.counts("kept"));
    let mut registry = Registry::builtin();
    registry.register(Box::new(SharedFactory(factory)));
    let endpoints = "  - id: cheap\n    transport: recorder\n    label: cheap\n    cheap: true\n    events: [\"*\"]\n  - id: kept\n    transport: recorder\n    label: kept\n    events: [\"*\"]\n";
    let yaml = config_yaml(kafka.bootstrap(), "on-demand", "", endpoints);
    let config = Config::from_yaml_with(&yaml, &|_| None, &registry).unwrap();
    let running = dispatcher::app::start_with(config, &registry)
        .await
        .unwrap();
    let alive = |c: &Counts| c.alive.load(Ordering::SeqCst);
    let built = |c: &Counts| c.built.load(Ordering::SeqCst);
    // Both were built to check their settings (by the config's check, and
    // as their endpoint was added); only the kept one stays.
    let (cheap_at_start, kept_at_start) = (built(&cheap), built(&kept));
    assert_eq!(alive(&cheap), 0);
    assert_eq!(alive(&kept), 1);

    let mut seeds = SeedEvents::new(42);
    for round in 1..=2 {
        let values: Vec<Vec<u8>> = (0..5)
            .map(|_| seeds.event("contact.created", 1_700_000_000_000).1)
            .collect();
        produce(kafka.bootstrap(), "events", &values).await;
        wait_until(
            Duration::from_secs(30),
            "both endpoints got the round and their lanes rest again",
            || seen.lock().unwrap().len() == round * 10 && running.metrics.lane_tasks.get() == 0,
        )
        .await;
        // Built again for the work, dropped when the lane rested.
        assert_eq!(alive(&cheap), 0, "round {round}");
        assert!(
            built(&cheap) >= cheap_at_start + round,
            "round {round}: built {} times",
            built(&cheap)
        );
        assert_eq!(
            (built(&kept), alive(&kept)),
            (kept_at_start, 1),
            "round {round}"
        );
    }
    running.shutdown().await.unwrap();
}

/// A factory the test keeps a handle on.
struct SharedFactory(Arc<RecorderFactory>);

impl TransportFactory for SharedFactory {
    fn type_name(&self) -> &'static str {
        self.0.type_name()
    }

    fn build(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        self.0.build(settings, ctx)
    }
}
