//! Wiring: builds the pipeline from a [`Config`], runs it, and shuts it
//! down in the order that keeps the delivery contract.
//!
//! Shutdown, step by step: readiness drops; the source stops reading and
//! closes the lanes' inboxes; the lanes finish what they hold, for at most
//! `pipeline.shutdown_grace`; whatever is still unfinished is abandoned
//! *without* being committed (the next owner re-reads it, same delivery
//! ids); the final watermarks are committed synchronously; the consumer
//! leaves its group.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use transports::http::{HttpClient, HttpClientOptions};
use transports::Registry;

use crate::admin::{self, AdminState};
use crate::api::{self, ApiContext, ApiState, ReplayContext};
use crate::backlog::Backlogs;
use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::embedded::EmbeddedKafka;
use crate::endpoints::{Endpoints, LaneKit};
use crate::fatal::Fatal;
use crate::kafka;
use crate::lane::{self, Dedup, Evictions, Front, Shares};
use crate::metrics::Metrics;
use crate::offsets::{Budget, HoldIndex, OffsetTracker};
use crate::park::{Parker, Tiers};
use crate::source::{self, Source, SourceConsumer, SourceContext};
use crate::spill::Spill;
use crate::store::{Follower, Store};

/// A running dispatcher.
pub struct Running {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// The brokers in use (the embedded one's address when none was configured).
    pub bootstrap: String,
    pub admin_addr: SocketAddr,
    /// The endpoint store this replica follows.
    pub store: Arc<Store>,
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
        let Running {
            shutdown,
            task,
            store,
            embedded,
            ..
        } = self;
        let _ = shutdown.send(true);
        let result = task
            .await
            .map_err(|e| anyhow!("dispatcher task failed: {e}"));
        // The store's producer before the embedded broker: a client left
        // without its broker logs errors while it closes.
        drop(store);
        drop(embedded);
        result?
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
    metrics.init_series(&config);
    let k = &config.kafka;

    let tiers = Arc::new(Tiers::new(&k.retry_topic, &k.retry_tiers, &k.spill_topic));
    let fatal = Fatal::new();
    let embedded = match &k.brokers {
        Some(_) => None,
        None => {
            let mut topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
            topics.push(&k.dead_letter_topic);
            topics.extend(tiers.topics());
            let e = EmbeddedKafka::start(&topics, k.embedded_partitions)?;
            // The embedded broker drops a partition's oldest records past a
            // few MiB: spread backlogs over more spill partitions.
            e.create_topic(&k.spill_topic, (k.embedded_partitions * 4).max(24))?;
            e.create_topic(&k.endpoints_topic, k.embedded_partitions)?;
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
    if k.create_topics && embedded.is_none() {
        let created = crate::topics::create_missing(&config, &bootstrap).await?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created the dispatcher's missing topics (kafka.create_topics)");
        }
    }
    check_topic(&producer, &k.dead_letter_topic, "kafka.dead_letter_topic").await?;
    check_topic(&producer, &k.spill_topic, "kafka.spill_topic").await?;
    check_topic(&producer, &k.endpoints_topic, "kafka.endpoints_topic").await?;

    // Stops the source, the backlog readers and the store's follower: on
    // request, or on a failure.
    let (halt_tx, halt_rx) = watch::channel(false);

    // Endpoints as data: read the whole store before anything starts, so
    // this replica begins with every endpoint (and every pause) in force.
    let (store, store_changes) = Store::new(
        k.endpoints_topic.clone(),
        producer.clone(),
        metrics.store_bad_records.clone(),
    );
    let follower_task = Follower::start(
        store.clone(),
        kafka::reader(k, &bootstrap, "store"),
        halt_rx.clone(),
    )
    .await?;
    let catching_up = std::time::Instant::now();
    while tokio::time::timeout(Duration::from_secs(5), store.caught_up())
        .await
        .is_err()
    {
        tracing::info!(
            topic = %k.endpoints_topic,
            endpoints = store.len(),
            waited_s = catching_up.elapsed().as_secs(),
            "reading the endpoint store"
        );
    }
    metrics.store_endpoints.set(store.len() as i64);
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
        fatal.clone(),
    ));
    let parker = Arc::new(Parker::new(
        producer.clone(),
        tiers.clone(),
        metrics.clone(),
        fatal.clone(),
    ));
    let dedup: Dedup =
        lane::dedup::new(config.pipeline.dedup.max_entries, config.pipeline.dedup.ttl);
    let (share_tx, share_rx) = watch::channel(1.0f64);

    // Endpoints often share a host (one receiver, many webhooks). Idle
    // connections beyond the pool's cap are closed and soon reopened, so the
    // cap is every endpoint's in-flight cap together: what may be open anyway
    // (endpoints added later share what there is).
    let idle_cap = config
        .endpoints
        .iter()
        .map(|e| e.max_in_flight)
        .sum::<usize>()
        .max(64);
    let client = HttpClient::new(HttpClientOptions {
        pool_max_idle_per_host: idle_cap,
        ..config.http.client_options()
    })
    .context("building the HTTP client")?;

    let p = &config.pipeline;
    let budget = Arc::new(Budget::new(
        p.max_events_in_flight,
        p.memory_budget.as_u64() as usize,
    ));
    metrics.memory_budget.set(p.memory_budget.as_u64() as i64);
    let (holds, holds_started) = HoldIndex::new();
    let tracker = Arc::new(OffsetTracker::new(budget.clone(), holds.clone()));
    let evictions = Arc::new(Evictions::default());
    let front = Arc::new(Front::new(p.spill_after));
    let shared_config = Arc::new(config.clone());
    let (endpoints, routing) = Endpoints::start(
        shared_config.clone(),
        Arc::new(registry.clone()),
        client,
        bootstrap.clone(),
        LaneKit {
            parker: parker.clone(),
            dead_letters: dead_letters.clone(),
            dedup,
            share: share_rx,
            metrics: metrics.clone(),
            budget,
            evictions: evictions.clone(),
            shares: Arc::new(Shares::new(
                p.memory_budget.as_u64() as usize,
                front.clone(),
            )),
            holds,
        },
        store.clone(),
        fatal.clone(),
    )?;
    let endpoints_task = tokio::spawn(endpoints.run(store_changes, halt_rx.clone()));

    let paused = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let rebalanced = Arc::new(AtomicBool::new(false));
    let context = SourceContext {
        tracker: tracker.clone(),
        paused: paused.clone(),
        ready: ready.clone(),
        metrics: metrics.clone(),
        rebalanced: rebalanced.clone(),
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
        .chain(tiers.internal_topics())
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
        let context = ApiContext {
            store: store.clone(),
            routing: routing.clone(),
            config: shared_config.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            replay: Some(ReplayContext {
                bootstrap: bootstrap.clone(),
                parker: parker.clone(),
            }),
        };
        let state = ApiState::new(context, &api_tokens, &config.api.allowed_hosts);
        tokio::spawn(api::serve(
            listener,
            state,
            api::server::Limits::default(),
            admin_stop_rx,
        ))
    });

    let backlogs = Backlogs {
        routing: routing.clone(),
        tracker: tracker.clone(),
        dead_letters: dead_letters.clone(),
        consumer: kafka::reader(k, &bootstrap, "backlog"),
        max_event_bytes: p.max_event_bytes,
        permits: Arc::new(tokio::sync::Semaphore::new(p.backlog_readers)),
        waiting: Default::default(),
        lost_records: metrics.internal_records_lost.clone(),
        superseded: metrics.spill_superseded.clone(),
    };
    let backlog_task = tokio::spawn(backlogs.run(holds_started, halt_rx.clone()));

    let source = Source {
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        routing,
        store: store.clone(),
        spill: Spill::new(parker, dead_letters.clone(), fatal.clone(), 0),
        dead_letters: dead_letters.clone(),
        tiers: tiers.clone(),
        evictions,
        metrics: metrics.clone(),
        fatal: fatal.clone(),
        paused,
        rebalanced,
        max_event_bytes: p.max_event_bytes,
        commit_interval: p.commit_interval,
        spill_after: p.spill_after,
        stall_grace: p.stall_grace,
        front,
        max_pending_per_partition: p.max_pending_per_partition,
    };
    let mut source_task = tokio::spawn(source.run(halt_rx));
    let clients_watch = tokio::spawn(watch_clients(consumer.clone(), producer, fatal.clone()));

    let grace = p.shutdown_grace;
    let task_metrics = metrics.clone();
    let mut stop = shutdown_rx;
    let (failed_tx, failed_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        // Until asked to stop, or until something fails that the process
        // cannot go on without: a fault no retry fixes, the source ending by
        // itself, a lane ending (the endpoint manager reports that as a
        // fault; only a bug can make either happen). Then stop too, and say
        // so, so that the process exits non-zero and is restarted rather
        // than sitting healthy without delivering.
        let mut source_end = None;
        let failure = tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => None,
            reason = fatal.tripped() => Some(anyhow!(reason)),
            ended = &mut source_task => {
                let failure = match (&ended, fatal.reason()) {
                    (_, Some(reason)) => Some(anyhow!(reason)),
                    (Ok(()), None) => Some(anyhow!("the source stopped by itself")),
                    (Err(e), None) => Some(anyhow!("the source task failed: {e}")),
                };
                source_end = Some(());
                failure
            }
        };
        live.store(false, Ordering::Release);
        let _ = halt_tx.send(true);
        match &failure {
            Some(e) => {
                tracing::error!(error = %e, "shutting down after a failure; draining deliveries");
                let _ = failed_tx.send(true);
            }
            None => tracing::info!("shutting down: no new records; draining deliveries"),
        }
        if source_end.is_none() {
            if let Err(e) = source_task.await {
                tracing::error!(error = %e, "the source task failed while stopping");
            }
        }
        // The source feeds the lanes no more: they finish what they hold.
        match endpoints_task.await {
            Ok(endpoints) => endpoints.stop(grace).await,
            Err(e) => tracing::error!(error = %e, "the endpoint manager failed"),
        }
        let _ = backlog_task.await;
        let _ = follower_task.await;
        source::commit_now(&consumer, &tracker, &task_metrics);
        let unfinished: usize = tracker.watermarks().iter().map(|w| w.3).sum();
        if unfinished > 0 {
            tracing::warn!(
                records = unfinished,
                "records not final at shutdown are left uncommitted; they will be delivered after restart"
            );
        }
        // Both hold the consumer: they must let go of it here, while the
        // brokers are still there for its goodbye, not whenever the
        // runtime gets round to dropping them.
        share_task.abort();
        clients_watch.abort();
        let _ = share_task.await;
        let _ = clients_watch.await;
        // Closing leaves the group (one revoke, its final commit, then the
        // goodbye). No `unsubscribe()` before it: that queued a revoke of
        // its own ahead of the close's, and the second unassign, sent to a
        // group that had closed meanwhile, was never answered (librdkafka
        // drops requests to a closed group): the exit hung.
        drop(consumer);
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
        store,
        api_addr,
        shutdown: shutdown_tx,
        failed: failed_rx,
        task,
        embedded,
    })
}

/// Watch the Kafka clients for librdkafka's fatal errors (a fenced or
/// failed idempotent producer, say): nothing recovers from those but a
/// new process.
async fn watch_clients(consumer: Arc<SourceConsumer>, producer: FutureProducer, fatal: Arc<Fatal>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some((code, text)) = producer.client().fatal_error() {
            fatal.trip(format!(
                "the Kafka producer failed for good ({code:?}): {text}"
            ));
            return;
        }
        if let Some((code, text)) = consumer.client().fatal_error() {
            fatal.trip(format!(
                "the Kafka consumer failed for good ({code:?}): {text}"
            ));
            return;
        }
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
/// partitions it consumes (source, retry and spill topics), so that N replicas
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
