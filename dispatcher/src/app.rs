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
use transports::http::{HttpClient, HttpClientOptions};
use transports::{Registry, Transport};

use crate::admin::{self, AdminState};
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::embedded::EmbeddedKafka;
use crate::kafka;
use crate::lane::{self, Dedup, LaneDeps, LaneSettings};
use crate::metrics::Metrics;
use crate::offsets::OffsetTracker;
use crate::park::{Parker, Tiers};
use crate::route::{EventPattern, Filter, Router, Subscription};
use crate::source::{self, Source, SourceConsumer, SourceContext};

/// A running dispatcher.
pub struct Running {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// The brokers in use (the embedded one's address when none was configured).
    pub bootstrap: String,
    pub admin_addr: SocketAddr,
    /// The management API's address, when it is on (a token is configured).
    pub api_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    failed: watch::Receiver<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    embedded: Option<EmbeddedKafka>,
}

impl Running {
    /// Resolves if the dispatcher stopped by itself after a failure; then
    /// [`Running::shutdown`] returns the error.
    pub async fn failed(&self) {
        let mut failed = self.failed.clone();
        let _ = failed.wait_for(|f| *f).await;
    }

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
    start_with(config, &Registry::builtin()).await
}

/// [`start`], with the transports of `registry`: how a program adds its own
/// transport without any change to the dispatcher.
pub async fn start_with(config: Config, registry: &Registry) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let k = &config.kafka;

    let tiers = Arc::new(Tiers::new(&k.retry_topic, &k.retry_tiers));
    let embedded = match &k.brokers {
        Some(_) => None,
        None => {
            let mut topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
            topics.push(&k.dead_letter_topic);
            topics.extend(tiers.topics());
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
    let api_tokens = config.api.load_tokens().map_err(|p| {
        anyhow!(
            "api: {}",
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let api_listener = match api_tokens.is_empty() {
        true => None,
        false => Some(api::bind(config.api.listen).await?),
    };
    let api_addr = api_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    if config.http.allow_private_networks {
        tracing::warn!("http.allow_private_networks is deprecated: list the networks endpoints may reach in http.allowed_networks");
    }

    let producer: FutureProducer = kafka::producer(k, &bootstrap, config.pipeline.max_event_bytes)
        .create()
        .context("creating the dead-letter producer (check kafka.options)")?;
    check_topic(&producer, &k.dead_letter_topic, "kafka.dead_letter_topic").await?;
    for topic in tiers.topics() {
        check_topic(
            &producer,
            topic,
            "kafka.retry_topic (with kafka.retry_tiers)",
        )
        .await?;
    }
    let dead_letters = Arc::new(DeadLetters::new(
        producer.clone(),
        k.dead_letter_topic.clone(),
        metrics.clone(),
    ));
    let parker = Arc::new(Parker::new(producer, tiers.clone(), metrics.clone()));
    let dedup: Dedup = moka::sync::Cache::builder()
        .max_capacity(config.pipeline.dedup.max_entries)
        .time_to_live(config.pipeline.dedup.ttl)
        .build();
    let (share_tx, share_rx) = watch::channel(1.0f64);

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
        pool_max_idle_per_host: idle_cap,
        ..config.http.client_options()
    })
    .context("building the HTTP client")?;

    let p = &config.pipeline;
    let kafka_options = config.kafka.option_strings();
    let mut lanes = Vec::new();
    let mut lane_tasks = Vec::new();
    let mut subscriptions = Vec::new();
    for ep in config.endpoints.iter().filter(|e| e.enabled) {
        let factory = registry
            .get(&ep.transport)
            .ok_or_else(|| anyhow!("endpoint {}: unknown transport `{}`", ep.id, ep.transport))?;
        let mut ctx = config.build_context(&ep.id, ep.timeout, &client, &kafka_options);
        ctx.kafka_bootstrap = &bootstrap;
        let transport: Arc<dyn Transport> = factory
            .build(&ep.settings_value(), &ctx)
            .map_err(|e| anyhow!("endpoint {}: {}: {}", ep.id, e.field, e.reason))?;
        let settings = LaneSettings {
            endpoint_id: ep.id.as_str().into(),
            retry: ep.retry.clone(),
            breaker: ep.circuit_breaker.clone(),
            max_in_flight: ep.max_in_flight,
            adaptive_concurrency: ep.adaptive_concurrency,
            rate_limit: ep.rate_limit.clone(),
            queue_capacity: ep.queue_capacity,
            in_memory_max: p.in_memory_retry_max,
            paused_recheck: p.paused_recheck,
            paused: ep.paused,
            transport: transport.clone(),
        };
        let deps = LaneDeps {
            parker: parker.clone(),
            dead_letters: dead_letters.clone(),
            dedup: dedup.clone(),
            share: share_rx.clone(),
            metrics: metrics.endpoint(&ep.id, transport.kind()),
        };
        let (handle, task) = lane::spawn(settings, deps);
        lanes.push(handle);
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
    let topics: Vec<&str> = k
        .topics
        .iter()
        .map(String::as_str)
        .chain(tiers.topics())
        .collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;
    let share_task = tokio::spawn(track_share(
        consumer.clone(),
        topics.iter().map(|t| t.to_string()).collect(),
        share_tx,
        metrics.clone(),
    ));

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
        admin_stop_rx.clone(),
    ));
    let api_task = api_listener.map(|listener| {
        let endpoints = Arc::new(
            lanes
                .iter()
                .map(|l| (l.endpoint_id.clone(), l.control.clone()))
                .collect(),
        );
        let state = ApiState::new(endpoints, &api_tokens, &config.api.allowed_hosts);
        tokio::spawn(api::serve(
            listener,
            state,
            api::server::Limits::default(),
            admin_stop_rx,
        ))
    });

    let source = Source {
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        router: Router::new(subscriptions),
        lanes,
        dead_letters: dead_letters.clone(),
        parker,
        metrics: metrics.clone(),
        paused,
        max_in_flight: p.max_events_in_flight,
        max_event_bytes: p.max_event_bytes,
        commit_interval: p.commit_interval,
    };
    let mut source_task = tokio::spawn(source.run(shutdown_rx.clone()));

    let grace = p.shutdown_grace;
    let task_metrics = metrics.clone();
    let mut stop = shutdown_rx;
    let (failed_tx, failed_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        // Until asked to stop, or until the source ends by itself, which
        // only a bug can make it do: then stop too, and say so, so that the
        // process exits non-zero and is restarted rather than sitting
        // healthy without consuming.
        let asked_to_stop = stop.clone();
        // The source's end, once seen (a JoinHandle must not be awaited twice).
        let mut source_end = None;
        let failure = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => None,
            ended = &mut source_task => {
                // It also stops when asked to: only an unasked stop is a failure.
                let asked = *asked_to_stop.borrow();
                let failure = match &ended {
                    Ok(()) if asked => None,
                    Ok(()) => Some(anyhow!("the source stopped by itself")),
                    Err(e) => Some(anyhow!("the source task failed: {e}")),
                };
                source_end = Some(ended);
                failure
            }
        };
        live.store(false, Ordering::Release);
        match &failure {
            Some(e) => {
                tracing::error!(error = %e, "shutting down after a failure; draining deliveries");
                let _ = failed_tx.send(true);
            }
            None => {
                tracing::info!("shutting down: no new records; draining deliveries");
                let ended = match source_end {
                    Some(ended) => ended,
                    None => source_task.await,
                };
                ended.map_err(|e| anyhow!("source task failed: {e}"))?;
            }
        }
        drain(lane_tasks, grace).await;
        source::commit(&consumer, &tracker, &task_metrics, CommitMode::Sync);
        let unfinished: usize = tracker.watermarks().iter().map(|w| w.3).sum();
        if unfinished > 0 {
            tracing::warn!(
                records = unfinished,
                "records not final at shutdown are left uncommitted; they will be delivered after restart"
            );
        }
        share_task.abort();
        consumer.unsubscribe();
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        if let Some(api_task) = api_task {
            let _ = api_task.await;
        }
        failure.map_or(Ok(()), Err)
    });

    Ok(Running {
        metrics,
        ready,
        bootstrap,
        admin_addr,
        api_addr,
        shutdown: shutdown_tx,
        failed: failed_rx,
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

/// Keep this replica's share of the rate limits current: its share of all
/// partitions it consumes (source and retry topics), so that N replicas
/// together stay under each endpoint's limit. Checked every few seconds;
/// the partition count is refreshed from metadata now and then.
async fn track_share(
    consumer: Arc<SourceConsumer>,
    topics: Vec<String>,
    share: watch::Sender<f64>,
    metrics: Arc<Metrics>,
) {
    let mut total: Option<usize> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    for round in 0u64.. {
        tick.tick().await;
        if total.is_none() || round % 30 == 0 {
            let c = consumer.clone();
            let t = topics.clone();
            let counted = tokio::task::spawn_blocking(move || {
                t.iter()
                    .map(|topic| {
                        c.fetch_metadata(Some(topic), Duration::from_secs(10))
                            .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
                    })
                    .sum::<Result<usize, _>>()
            })
            .await;
            match counted {
                Ok(Ok(n)) if n > 0 => total = Some(n),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot count partitions for the rate-limit share")
                }
                _ => {}
            }
        }
        let (Some(total), Ok(assigned)) = (total, consumer.assignment()) else {
            continue;
        };
        // Before the first assignment, or with none, keep the full share:
        // a replica with no partitions sends nothing anyway.
        let fraction = if assigned.count() == 0 {
            1.0
        } else {
            (assigned.count() as f64 / total as f64).min(1.0)
        };
        metrics.rate_limit_share.set(fraction);
        share.send_if_modified(|s| {
            let changed = (*s - fraction).abs() > 1e-9;
            *s = fraction;
            changed
        });
    }
}
