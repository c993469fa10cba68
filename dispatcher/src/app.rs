//! Wiring: builds the pipeline from a [`Config`], runs it, and shuts it
//! down in the order that keeps the delivery contract.
//!
//! Shutdown, step by step: readiness drops; the source stops reading and
//! drops its lane senders; the lanes finish what they hold, for at most
//! `pipeline.shutdown_grace`; whatever is still unfinished is abandoned
//! *without* being committed (the next owner re-reads it, same delivery
//! ids); the final watermarks are committed synchronously; the consumer
//! leaves its group.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use transports::http::{HttpClient, HttpClientOptions, HttpTransport};
use transports::Transport;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::embedded::EmbeddedKafka;
use crate::kafka;
use crate::lane::{Lane, RetryPolicy};
use crate::metrics::Metrics;
use crate::offsets::OffsetTracker;
use crate::route::{EventPattern, Filter, Router, Subscription};
use crate::source::{self, Source, SourceConsumer, SourceContext};

/// A running dispatcher.
pub struct Running {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// The brokers in use (the embedded one's address when none was configured).
    pub bootstrap: String,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    embedded: Option<EmbeddedKafka>,
}

impl Running {
    /// Ask for a graceful shutdown and wait until it is done.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let result = self
            .task
            .await
            .map_err(|e| anyhow!("dispatcher task failed: {e}"))?;
        drop(self.embedded);
        result
    }

    /// The embedded broker, when one was started.
    pub fn embedded(&self) -> Option<&EmbeddedKafka> {
        self.embedded.as_ref()
    }
}

/// Build everything and start. Fails fast, naming what is wrong, when a
/// broker, topic or listener is unusable.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let k = &config.kafka;

    let embedded = match &k.brokers {
        Some(_) => None,
        None => {
            let mut topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
            topics.push(&k.dead_letter_topic);
            topics.push(&k.retry_topic);
            let e = EmbeddedKafka::start(&topics, k.embedded_partitions)?;
            tracing::info!(
                bootstrap = e.bootstrap(),
                "no kafka.brokers configured: started an embedded Kafka"
            );
            Some(e)
        }
    };
    let bootstrap = match (&k.brokers, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap().to_owned(),
        (None, None) => unreachable!("an embedded broker exists when none is configured"),
    };

    let listener = admin::bind(config.admin.listen).await?;
    let admin_addr = listener.local_addr()?;

    let producer: FutureProducer = kafka::producer(k, &bootstrap)
        .create()
        .context("creating the dead-letter producer (check kafka.options)")?;
    check_topic(&producer, &k.dead_letter_topic, "kafka.dead_letter_topic").await?;
    let dead_letters = Arc::new(DeadLetters::new(
        producer,
        k.dead_letter_topic.clone(),
        metrics.clone(),
    ));

    // Endpoints often share a host (one receiver, many webhooks). Idle
    // connections beyond the pool's cap are closed and soon reopened, so the
    // cap is every endpoint's in-flight cap together: what may be open anyway.
    let idle_cap = config
        .endpoints
        .iter()
        .map(|e| e.max_in_flight)
        .sum::<usize>()
        .max(1);
    let client = HttpClient::new(HttpClientOptions {
        allow_private_networks: config.http.allow_private_networks,
        pool_max_idle_per_host: idle_cap,
        ..Default::default()
    })
    .context("building the HTTP client")?;

    let p = &config.pipeline;
    let policy = RetryPolicy::new(p.max_attempts, p.retry_backoff);
    let mut lanes = Vec::new();
    let mut lane_tasks = Vec::new();
    let mut subscriptions = Vec::new();
    for ep in config.endpoints.iter().filter(|e| e.enabled) {
        let transport: Arc<dyn Transport> = Arc::new(
            HttpTransport::new(ep.into(), client.clone())
                .with_context(|| format!("endpoint {}: invalid HTTP settings", ep.id))?,
        );
        let lane = Lane {
            endpoint_id: ep.id.as_str().into(),
            metrics: metrics.endpoint(&ep.id, transport.kind()),
            transport,
            policy: policy.clone(),
            max_in_flight: ep.max_in_flight,
            dead_letters: dead_letters.clone(),
        };
        // Each queue can hold every record in flight, so the source never
        // waits on one lane: the in-flight budget is the real bound.
        let (sender, task) = lane.spawn(p.max_events_in_flight + 64);
        lanes.push(sender);
        lane_tasks.push(task);
        subscriptions.push(Subscription {
            patterns: ep
                .events
                .iter()
                .map(|e| EventPattern::parse(e).map_err(|m| anyhow!("endpoint {}: {m}", ep.id)))
                .collect::<anyhow::Result<_>>()?,
            filter: Filter::parse(&ep.filter)
                .map_err(|(key, m)| anyhow!("endpoint {}: filter {key}: {m}", ep.id))?,
        });
    }

    let tracker = Arc::new(OffsetTracker::new(p.max_events_in_flight * 3 / 4));
    let paused = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let context = SourceContext {
        tracker: tracker.clone(),
        paused: paused.clone(),
        ready: ready.clone(),
        metrics: metrics.clone(),
    };
    let consumer: Arc<SourceConsumer> = Arc::new(
        kafka::consumer(k, &bootstrap)
            .create_with_context(context)
            .context("creating the Kafka consumer (check kafka.options)")?,
    );
    let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The admin server outlives the drain, so it can be watched and probed
    // until the very end.
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let live = Arc::new(AtomicBool::new(true));
    let admin_task = tokio::spawn(admin::serve(
        listener,
        AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            live: live.clone(),
        },
        admin_stop_rx,
    ));

    let source = Source {
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        router: Router::new(subscriptions),
        lanes,
        dead_letters: dead_letters.clone(),
        metrics: metrics.clone(),
        paused,
        max_in_flight: p.max_events_in_flight,
        max_event_bytes: p.max_event_bytes,
        commit_interval: p.commit_interval,
    };
    let source_task = tokio::spawn(source.run(shutdown_rx.clone()));

    let grace = p.shutdown_grace;
    let task_metrics = metrics.clone();
    let mut stop = shutdown_rx;
    let task = tokio::spawn(async move {
        // Until asked to stop (or the sender is gone).
        let _ = stop.wait_for(|s| *s).await;
        live.store(false, Ordering::Release);
        tracing::info!("shutting down: no new records; draining deliveries");
        source_task
            .await
            .map_err(|e| anyhow!("source task failed: {e}"))?;
        drain(lane_tasks, grace).await;
        source::commit(&consumer, &tracker, &task_metrics, CommitMode::Sync);
        let unfinished: usize = tracker.watermarks().iter().map(|w| w.3).sum();
        if unfinished > 0 {
            tracing::warn!(
                records = unfinished,
                "records not final at shutdown are left uncommitted; they will be delivered after restart"
            );
        }
        consumer.unsubscribe();
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        Ok(())
    });

    Ok(Running {
        metrics,
        ready,
        bootstrap,
        admin_addr,
        shutdown: shutdown_tx,
        task,
        embedded,
    })
}

/// Wait for the lanes to finish, at most `grace`; abort the rest.
async fn drain(tasks: Vec<JoinHandle<()>>, grace: Duration) {
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    if tokio::time::timeout(grace, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs_f64(),
            "shutdown grace period over; abandoning unfinished deliveries"
        );
        aborts.iter().for_each(|a| a.abort());
    }
}

/// Fail at start-up, clearly, when a topic the dispatcher writes to is missing.
async fn check_topic(producer: &FutureProducer, topic: &str, key: &str) -> anyhow::Result<()> {
    let client = producer.clone();
    let topic_owned = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&topic_owned), Duration::from_secs(15))
    })
    .await?
    .with_context(|| {
        format!("{key}: cannot read metadata of topic `{topic}` (are the brokers reachable?)")
    })?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        Some(t) => Err(anyhow!(
            "{key}: topic `{topic}` is not usable: {:?} (create it before starting)",
            t.error()
        )),
        None => Err(anyhow!(
            "{key}: topic `{topic}` does not exist (create it before starting)"
        )),
    }
}
