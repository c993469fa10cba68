//! The endpoints in force on this replica, each with its lane: the config
//! file's (GitOps) and the endpoint store's (the API's), kept current while
//! the dispatcher runs.
//!
//! A change read from the store applies here within a moment, with no
//! restart and no rebalance:
//!
//! - a new endpoint gets a new lane;
//! - a changed one is updated in place: the lane takes its new policy, and a
//!   new transport when its connection settings changed (sends in flight
//!   finish on the old one); the router takes its new subscriptions;
//! - a paused one stops sending, its work waiting in Kafka; resumed, it
//!   goes on;
//! - a deleted one leaves the router at once, and its lane dead-letters
//!   what is left of its work (reason `endpoint_deleted`, replayable) and
//!   ends once nothing of it is left, in memory or under a hold.
//!
//! Pause and the 410-disabled state live in the store, for the file's
//! endpoints too (a record with only the endpoint's id and its state), so
//! every replica and every restart agree on them.
//!
//! The source and the backlog readers see the endpoints through a
//! [`Routing`] snapshot, replaced as a whole at every change.

mod connect;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use transports::http::HttpClient;
use transports::{BoxFuture, Registry};

use crate::config::{Config, EndpointConfig};
use crate::dlq::DeadLetters;
use crate::fatal::Fatal;
use crate::lane::{
    self, BreakerConfig, Dedup, Evictions, Exit, Interned, LaneHandle, LaneSettings, LaneShared,
    LaneTransport, LaneUpdate, RetryConfig, Shares, Started,
};
use crate::metrics::Metrics;
use crate::offsets::{Budget, HoldIndex};
use crate::park::Parker;
use crate::route::{EventPattern, Filter, RouteTable, Subscriber, Subscription, Tenant, TenantKey};
use crate::store::{Change, EndpointState, Store, StoredEndpoint};

/// A [`Routing`] before its table is built.
struct Snapshot {
    lanes: Vec<Option<LaneHandle>>,
    by_id: HashMap<Arc<str>, usize>,
    routed: Vec<bool>,
}

/// The endpoints as the source and the readers see them at one moment.
pub struct Routing {
    /// Lanes by index; `None` where an endpoint was deleted and its lane
    /// ended (indices are never reused).
    pub lanes: Vec<Option<LaneHandle>>,
    /// Lane index by endpoint id, for records that name their endpoint
    /// (deleted endpoints stay while their lane lives).
    pub by_id: HashMap<Arc<str>, usize>,
    /// The routing table the source routes with: lane indices by tenant,
    /// event type and filter (a deleted endpoint's lane is not in it).
    pub table: Arc<RouteTable>,
    /// By lane index: whether the table routes to it.
    pub routed: Vec<bool>,
}

impl Routing {
    pub fn lane(&self, index: usize) -> Option<&LaneHandle> {
        self.lanes.get(index)?.as_ref()
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Whether events are routed to lane `index` (not to a deleted
    /// endpoint's, nor to a gone one's).
    pub fn routes_to(&self, index: usize) -> bool {
        self.routed.get(index).copied().unwrap_or(false)
    }

    /// No lanes, no routes.
    pub fn empty() -> Routing {
        Routing {
            lanes: Vec::new(),
            by_id: HashMap::new(),
            table: Arc::new(RouteTable::build(None, [])),
            routed: Vec::new(),
        }
    }
}

/// What every lane shares, to build new ones.
pub struct LaneKit {
    pub parker: Arc<Parker>,
    pub dead_letters: Arc<DeadLetters>,
    pub dedup: Dedup,
    pub share: watch::Receiver<f64>,
    pub metrics: Arc<Metrics>,
    pub budget: Arc<Budget>,
    pub evictions: Arc<Evictions>,
    pub shares: Arc<Shares>,
    pub holds: Arc<HoldIndex>,
}

/// Where an endpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The config file: read-only at run time, but for its state.
    File,
    /// The endpoint store, at this version.
    Store(u64),
}

struct Managed {
    /// Its lane, made at its first work.
    handle: LaneHandle,
    /// What its transport is built from (shared with the lane's builder,
    /// when the lane builds it). The rest of the endpoint's config lives
    /// on only in the lane's settings and in `subscriber`.
    spec: Arc<connect::TransportSpec>,
    /// How the router sees it, parsed once; `None` when that failed (it
    /// was checked when read, so only a bug gets here): not routed.
    subscriber: Option<Subscriber>,
    transport: LaneTransport,
    origin: Origin,
    deleting: bool,
}

/// The endpoint manager: one task, the only writer of [`Routing`].
pub struct Endpoints {
    config: Arc<Config>,
    transports: Arc<connect::Builder>,
    kit: LaneKit,
    store: Arc<Store>,
    fatal: Arc<Fatal>,
    lanes: Vec<Option<Managed>>,
    by_id: HashMap<Arc<str>, usize>,
    routing: watch::Sender<Arc<Routing>>,
    /// Where an event's tenant is (`routing.tenant_key`).
    tenant_key: Option<TenantKey>,
    /// The lane tasks running now (a lane has one only while it has work).
    tasks: FuturesUnordered<BoxFuture<'static, (usize, Result<Exit, tokio::task::JoinError>)>>,
    /// The tasks of each lane that has one (two for a moment, when one
    /// ends as the next starts), to abort past the shutdown grace.
    aborts: HashMap<usize, Vec<tokio::task::AbortHandle>>,
    /// What every lane is given alike (the senders of the two channels
    /// below among it).
    lane_shared: Arc<LaneShared>,
    retry_policies: Interned<RetryConfig>,
    breaker_policies: Interned<BreakerConfig>,
    /// Tasks the lanes' runners started.
    started_rx: mpsc::UnboundedReceiver<Started>,
    /// Lanes that disabled their endpoint (a 410), to record in the store.
    disabled_rx: mpsc::UnboundedReceiver<usize>,
}

impl Endpoints {
    /// Start a lane for every enabled endpoint of the file and of the store
    /// (the store must have caught up), with the state the store keeps.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: Arc<Config>,
        registry: Arc<Registry>,
        client: HttpClient,
        bootstrap: String,
        kit: LaneKit,
        store: Arc<Store>,
        fatal: Arc<Fatal>,
    ) -> anyhow::Result<(Endpoints, watch::Receiver<Arc<Routing>>)> {
        let tenant_key = config
            .routing
            .tenant_key
            .as_deref()
            .map(TenantKey::parse)
            .transpose()
            .map_err(|m| anyhow!("routing.tenant_key: {m}"))?;
        let (routing, routing_rx) = watch::channel(Arc::new(Routing::empty()));
        let (disabled_tx, disabled_rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = mpsc::unbounded_channel();
        let p = &config.pipeline;
        let lane_shared = Arc::new(LaneShared {
            share: kit.share.clone(),
            parker: kit.parker.clone(),
            dead_letters: kit.dead_letters.clone(),
            dedup: kit.dedup.clone(),
            budget: kit.budget.clone(),
            evictions: kit.evictions.clone(),
            shares: kit.shares.clone(),
            holds: kit.holds.clone(),
            disabled: Some(disabled_tx),
            started: started_tx,
            lanes_made: kit.metrics.lanes_made.clone(),
            in_memory_max: p.in_memory_retry_max,
            paused_recheck: p.paused_recheck,
            spill_after: p.spill_after,
        });
        let mut this = Endpoints {
            transports: Arc::new(connect::Builder {
                kafka_options: config.kafka.option_strings(),
                config: config.clone(),
                registry,
                client,
                bootstrap,
            }),
            config,
            kit,
            store,
            fatal,
            lanes: Vec::new(),
            by_id: HashMap::new(),
            routing,
            tenant_key,
            tasks: FuturesUnordered::new(),
            aborts: HashMap::new(),
            lane_shared,
            retry_policies: Interned::new(),
            breaker_policies: Interned::new(),
            started_rx,
            disabled_rx,
        };
        let file: Vec<EndpointConfig> = this
            .config
            .endpoints
            .iter()
            .filter(|e| e.enabled)
            .cloned()
            .collect();
        // Exactly: at 100,000 endpoints a doubled Vec's spare half costs
        // megabytes.
        this.lanes.reserve_exact(file.len() + this.store.len());
        for ep in file {
            let state = this
                .store
                .get(&ep.id)
                .map(|s| s.state)
                .unwrap_or(EndpointState {
                    paused: ep.paused,
                    disabled: false,
                });
            this.add(ep, Origin::File, state)
                .map_err(|e| anyhow!("endpoints: {e}"))?;
        }
        for id in this.store.ids() {
            if this.by_id.contains_key(id.as_str()) || this.is_file_endpoint(&id) {
                continue;
            }
            let Some(stored) = this.store.get(&id) else {
                continue;
            };
            if let Some(ep) = this.read_stored(&id, &stored) {
                if let Err(e) = this.add(ep, Origin::Store(stored.version), stored.state) {
                    tracing::error!(endpoint = %id, error = %e, "endpoint from the store not started");
                }
            }
        }
        this.publish();
        Ok((this, routing_rx))
    }

    fn is_file_endpoint(&self, id: &str) -> bool {
        self.config.endpoints.iter().any(|e| e.id == id)
    }

    /// The endpoint a store record holds, checked as the file's are.
    fn read_stored(&self, id: &str, stored: &StoredEndpoint) -> Option<EndpointConfig> {
        // Secrets are sealed in the store (crate::secrets): open them first;
        // a record that does not open is refused like an invalid one.
        match (self
            .config
            .secrets
            .keyring
            .open_endpoint(id, &stored.endpoint))
        .and_then(|endpoint| {
            self.config
                .endpoint_from_json(&endpoint, &self.transports.registry)
        }) {
            Ok(mut ep) => {
                // The API shows a stored endpoint from the store: a second
                // copy of its JSON here would only cost memory.
                ep.source = serde_json::Map::new();
                Some(ep)
            }
            Err(problems) => {
                self.kit.metrics.store_bad_records.inc();
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                tracing::error!(endpoint = %id, version = stored.version, problems = %list.join("; "), "endpoint in the store is not valid; its previous version stays in force");
                None
            }
        }
    }

    fn settings(
        &mut self,
        ep: &EndpointConfig,
        index: usize,
        transport: LaneTransport,
        paused: bool,
    ) -> LaneSettings {
        LaneSettings {
            endpoint_id: ep.id.as_str().into(),
            index,
            transport,
            retry: self.retry_policies.get(&ep.retry),
            breaker: self.breaker_policies.get(&ep.circuit_breaker),
            max_in_flight: ep.max_in_flight,
            adaptive_concurrency: ep.adaptive_concurrency,
            rate_limit: ep.rate_limit.clone().map(Box::new),
            queue_capacity: ep.queue_capacity,
            paused,
            tenant: ep.tenant.as_deref().map(Arc::from),
            // Checked with the endpoint: a key that does not parse never
            // gets here.
            ordering: ep
                .ordering
                .as_ref()
                .and_then(|o| crate::lane::KeyOrdering::parse(o).ok())
                .map(Arc::new),
        }
    }

    /// Start a lane for `ep`.
    fn add(
        &mut self,
        ep: EndpointConfig,
        origin: Origin,
        state: EndpointState,
    ) -> anyhow::Result<()> {
        let spec = Arc::new(connect::TransportSpec::of(&ep));
        let transport = self.transports.lane_transport(&spec)?;
        let index = self.lanes.len();
        // The registry found its factory by this name: it is the kind.
        let metrics =
            self.kit
                .metrics
                .endpoint_of(&ep.id, &ep.transport, ep.tenant.as_deref(), ep.metrics);
        self.kit.metrics.init_transport_series(&ep.transport);
        let settings = self.settings(&ep, index, transport.clone(), state.paused);
        let handle = lane::create(settings, self.lane_shared.clone(), metrics);
        if state.disabled {
            handle.set_switches(state.paused, true);
        }
        self.by_id.insert(handle.endpoint_id.clone(), index);
        self.lanes.push(Some(Managed {
            handle,
            spec,
            subscriber: routed(&ep, index),
            transport,
            origin,
            deleting: false,
        }));
        Ok(())
    }

    /// Apply one change read from the store.
    fn apply(&mut self, change: Change) {
        // A change the store has moved past since it was sent: the store's
        // reader sends one for every record it reads once caught up, and a
        // burst of writes may queue several versions of one endpoint,
        // which the lanes, made from the store's latest state, may already
        // be past. The later change is in force or queued.
        let (id, version) = match &change {
            Change::Upsert { id, stored } => (id, stored.version),
            Change::Delete { id, version } => (id, *version),
        };
        if version < self.store.version(id) {
            return;
        }
        match change {
            Change::Upsert { id, stored } => {
                let lane = self
                    .by_id
                    .get(id.as_str())
                    .copied()
                    .and_then(|i| self.lanes[i].as_ref().map(|m| (i, m.origin, m.deleting)));
                match lane {
                    // A file endpoint: only its state lives in the store.
                    // Or the version in force, read again (a record written
                    // between the store's catch-up and the lanes' start is in
                    // the table they were made from and comes as a change
                    // too): only its state may say something new.
                    Some((i, origin, deleting))
                        if origin == Origin::File
                            || (origin == Origin::Store(stored.version) && !deleting) =>
                    {
                        if let Some(m) = self.lanes[i].as_ref() {
                            m.handle
                                .set_switches(stored.state.paused, stored.state.disabled);
                        }
                    }
                    Some((i, previous, false)) => {
                        let Some(ep) = self.read_stored(&id, &stored) else {
                            return;
                        };
                        if let Err(e) = self.update(i, ep, stored.version, stored.state) {
                            tracing::error!(endpoint = %id, error = %e, ?previous, "endpoint change not applied; its previous version stays in force");
                        }
                    }
                    // Being deleted: a new version waits until its lane is gone.
                    Some((_, _, true)) => {
                        tracing::warn!(endpoint = %id, "endpoint written again while its deletion drains; restart or write it again later");
                    }
                    // A file endpoint switched off in the file: no lane.
                    None if self.is_file_endpoint(&id) => {}
                    None => {
                        let Some(ep) = self.read_stored(&id, &stored) else {
                            return;
                        };
                        if let Err(e) = self.add(ep, Origin::Store(stored.version), stored.state) {
                            tracing::error!(endpoint = %id, error = %e, "new endpoint not started");
                        } else {
                            self.kit
                                .metrics
                                .endpoint_changes
                                .with_label_values(&["added"])
                                .inc();
                            tracing::info!(endpoint = %id, version = stored.version, "endpoint added");
                        }
                    }
                }
            }
            Change::Delete { id, .. } => {
                let Some(&i) = self.by_id.get(id.as_str()) else {
                    return;
                };
                let Some(m) = self.lanes[i].as_mut() else {
                    return;
                };
                match m.origin {
                    // The file's endpoint stays; only its stored state went.
                    Origin::File => m.handle.set_switches(false, false),
                    Origin::Store(_) if !m.deleting => {
                        m.deleting = true;
                        m.handle.update(LaneUpdate::Delete);
                        self.kit
                            .metrics
                            .endpoint_changes
                            .with_label_values(&["deleted"])
                            .inc();
                        tracing::info!(endpoint = %id, "endpoint deleted");
                    }
                    Origin::Store(_) => {}
                }
            }
        }
    }

    /// Update lane `i` in place to `ep`.
    fn update(
        &mut self,
        i: usize,
        ep: EndpointConfig,
        version: u64,
        state: EndpointState,
    ) -> anyhow::Result<()> {
        let Some(m) = self.lanes[i].as_ref() else {
            return Ok(());
        };
        let spec = connect::TransportSpec::of(&ep);
        let reconnect = *m.spec != spec;
        let (spec, transport) = if reconnect {
            let spec = Arc::new(spec);
            let transport = self.transports.lane_transport(&spec)?;
            (spec, transport)
        } else {
            (m.spec.clone(), m.transport.clone())
        };
        let settings = self.settings(&ep, i, transport.clone(), state.paused);
        let Some(m) = self.lanes[i].as_mut() else {
            return Ok(());
        };
        m.handle.update(LaneUpdate::Settings(Box::new(settings)));
        m.handle.set_switches(state.paused, state.disabled);
        self.kit
            .metrics
            .endpoint_changed(&ep.id, &ep.transport, ep.tenant.as_deref(), ep.metrics);
        m.spec = spec;
        m.subscriber = routed(&ep, i);
        m.transport = transport;
        m.origin = Origin::Store(version);
        tracing::info!(endpoint = %ep.id, version, reconnect, "endpoint updated");
        self.kit
            .metrics
            .endpoint_changes
            .with_label_values(&["updated"])
            .inc();
        Ok(())
    }

    /// Replace the snapshot the source and the readers see.
    fn publish(&self) {
        let (snapshot, subscribers) = self.snapshot();
        let table = RouteTable::build(self.tenant_key.clone(), subscribers);
        self.send(snapshot, table);
    }

    /// [`Endpoints::publish`], with the routing table built on a blocking
    /// thread: at 100,000 endpoints a build takes about 190 ms, which would
    /// hold one of the runtime's workers (two on a 2-core pod) and the
    /// lanes and source tasks queued on it.
    async fn publish_off_runtime(&mut self) {
        let (snapshot, subscribers) = self.snapshot();
        let key = self.tenant_key.clone();
        match tokio::task::spawn_blocking(move || RouteTable::build(key, subscribers)).await {
            Ok(table) => self.send(snapshot, table),
            Err(e) => self
                .fatal
                .trip(format!("building the routing table failed: {e}")),
        }
    }

    /// Everything of the next snapshot but its routing table, and the
    /// subscribers to build that from.
    fn snapshot(&self) -> (Snapshot, Vec<Subscriber>) {
        let mut by_id = HashMap::with_capacity(self.by_id.len());
        let mut lanes = Vec::with_capacity(self.lanes.len());
        let mut subscribers = Vec::with_capacity(self.lanes.len());
        let mut routed = vec![false; self.lanes.len()];
        for (i, m) in self.lanes.iter().enumerate() {
            match m {
                Some(m) => {
                    by_id.insert(m.handle.endpoint_id.clone(), i);
                    lanes.push(Some(m.handle.clone()));
                    if m.deleting {
                        continue;
                    }
                    if let Some(s) = &m.subscriber {
                        subscribers.push(s.clone());
                        routed[i] = true;
                    }
                }
                None => lanes.push(None),
            }
        }
        (
            Snapshot {
                lanes,
                by_id,
                routed,
            },
            subscribers,
        )
    }

    fn send(&self, snapshot: Snapshot, table: RouteTable) {
        let Snapshot {
            lanes,
            by_id,
            routed,
        } = snapshot;
        self.routing.send_replace(Arc::new(Routing {
            lanes,
            by_id,
            table: Arc::new(table),
            routed,
        }));
        self.kit
            .metrics
            .store_endpoints
            .set(self.store.len() as i64);
    }

    /// Follow the store until `halt`; then the caller stops the lanes with
    /// [`Endpoints::stop`] once the source no longer feeds them.
    pub async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<Change>,
        mut halt: watch::Receiver<bool>,
    ) -> Endpoints {
        loop {
            if *halt.borrow() {
                return self;
            }
            tokio::select! {
                _ = halt.changed() => {}
                change = changes.recv() => match change {
                    Some(change) => {
                        self.apply(change);
                        // Apply everything already read, then publish once.
                        while let Ok(change) = changes.try_recv() {
                            self.apply(change);
                        }
                        self.publish_off_runtime().await;
                    }
                    None => {
                        let _ = halt.changed().await;
                    }
                },
                Some(started) = self.started_rx.recv() => self.track(started),
                Some((i, ended)) = self.tasks.next(), if !self.tasks.is_empty() => self.ended(i, ended),
                Some(i) = self.disabled_rx.recv() => self.record_disabled(i),
            }
        }
    }

    /// A lane's runner started a task: follow it.
    fn track(&mut self, started: Started) {
        let Started { index, task } = started;
        self.aborts
            .entry(index)
            .or_default()
            .push(task.abort_handle());
        self.tasks
            .push(Box::pin(async move { (index, task.await) }));
        self.kit.metrics.lane_tasks.set(self.tasks.len() as i64);
    }

    /// A lane's task ended: one with nothing to do, as lanes do; a deleted
    /// endpoint's lane, done; anything else is a failure.
    fn ended(&mut self, i: usize, ended: Result<Exit, tokio::task::JoinError>) {
        self.kit.metrics.lane_tasks.set(self.tasks.len() as i64);
        if let Some(aborts) = self.aborts.get_mut(&i) {
            aborts.retain(|a| !a.is_finished());
            if aborts.is_empty() {
                self.aborts.remove(&i);
            }
        }
        if matches!(ended, Ok(Exit::Idle)) {
            return;
        }
        let deleting = self.lanes[i].as_ref().is_some_and(|m| m.deleting);
        if deleting && ended.is_ok() {
            if let Some(m) = self.lanes[i].take() {
                let id = &m.handle.endpoint_id;
                self.by_id.remove(id);
                self.kit.metrics.forget_endpoint(id);
                tracing::info!(endpoint = %id, "deleted endpoint's lane finished");
            }
            self.publish();
            return;
        }
        let id = self.lanes[i]
            .as_ref()
            .map_or_else(|| format!("#{i}"), |m| m.handle.endpoint_id.to_string());
        self.fatal.trip(match ended {
            Ok(_) => format!("the lane of endpoint {id} ended by itself"),
            Err(e) => format!("the lane of endpoint {id} failed: {e}"),
        });
    }

    /// A lane's endpoint answered 410: keep that in the store, so every
    /// replica and every restart agree.
    fn record_disabled(&self, i: usize) {
        let Some(m) = self.lanes.get(i).and_then(Option::as_ref) else {
            return;
        };
        let id = m.handle.endpoint_id.to_string();
        let paused = m.handle.control.paused();
        let from_store = matches!(m.origin, Origin::Store(_));
        let store = self.store.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                let version = store.version(&id);
                let endpoint = match store.get(&id) {
                    Some(stored) if from_store => stored.endpoint,
                    // A file endpoint keeps only its state in the store.
                    _ => {
                        let mut only_id = serde_json::Map::new();
                        only_id.insert("id".into(), serde_json::Value::String(id.clone()));
                        only_id
                    }
                };
                let state = EndpointState {
                    paused,
                    disabled: true,
                };
                match store.write(&id, version, Some((endpoint, state))).await {
                    Ok(_) => return,
                    Err(crate::store::WriteError::Conflict { .. }) => continue,
                    Err(e) => {
                        tracing::warn!(endpoint = %id, error = %e, "could not record the disabled state in the store");
                        return;
                    }
                }
            }
        });
    }

    /// Close every lane's inbox and wait, at most `grace`, for them to
    /// finish what they hold; abort the rest (their records are read again
    /// after the restart).
    pub async fn stop(mut self, grace: Duration) {
        // A closed inbox wakes its lane's task, if it has one, to finish;
        // a lane without one has nothing to finish.
        for m in self.lanes.iter().flatten() {
            m.handle.close();
        }
        let all = async {
            loop {
                while let Ok(started) = self.started_rx.try_recv() {
                    self.track(started);
                }
                if self.tasks.next().await.is_none() && self.started_rx.is_empty() {
                    return;
                }
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "shutdown grace period over; abandoning unfinished deliveries"
            );
            while let Ok(started) = self.started_rx.try_recv() {
                self.track(started);
            }
            self.aborts.values().flatten().for_each(|a| a.abort());
        }
    }
}

/// `ep` as the router sees it, or `None`, logged: an error here (the
/// endpoint was checked when read) leaves it unrouted rather than failing
/// the others.
fn routed(ep: &EndpointConfig, lane: usize) -> Option<Subscriber> {
    subscriber(ep, lane)
        .inspect_err(|e| tracing::error!(endpoint = %ep.id, error = %e, "endpoint not routed"))
        .ok()
}

/// What the router needs of an endpoint: its tenant and subscription.
pub fn subscriber(ep: &EndpointConfig, lane: usize) -> anyhow::Result<Subscriber> {
    Ok(Subscriber {
        lane,
        tenant: ep
            .tenant
            .as_deref()
            .map(Tenant::new)
            .transpose()
            .map_err(|m| anyhow!("endpoint {}: tenant: {m}", ep.id))?,
        subscription: subscription(ep)?,
    })
}

/// The event types and filter of an endpoint.
pub fn subscription(ep: &EndpointConfig) -> anyhow::Result<Subscription> {
    Ok(Subscription {
        patterns: ep
            .events
            .iter()
            .map(|e| EventPattern::parse(e).map_err(|m| anyhow!("endpoint {}: {m}", ep.id)))
            .collect::<anyhow::Result<_>>()?,
        filter: Filter::parse(&ep.filter)
            .map_err(|(key, m)| anyhow!("endpoint {}: filter {key}: {m}", ep.id))?,
    })
}
