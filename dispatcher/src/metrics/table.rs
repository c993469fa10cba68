//! Which endpoints have series of their own, and the per-tenant sums that
//! stand for the rest.
//!
//! Every endpoint's numbers live in its [`EndpointCounters`]; this table
//! knows them all and turns them into series when Prometheus scrapes:
//!
//! - **Per tenant, always**: `dispatcher_tenant_*` sums every endpoint of a
//!   tenant (endpoints without one are summed under `tenant=""`), so the
//!   totals a dashboard or an alert needs are exact and their number grows
//!   with tenants, not endpoints.
//! - **Per endpoint, when it matters**: with `metrics.endpoint_series: all`,
//!   every endpoint. With `auto` (the default), every endpoint while the
//!   replica runs at most `metrics.endpoint_series_max` of them; past that,
//!   only the endpoints marked `metrics: detailed` and those showing
//!   trouble (a failed or throttled attempt, a dead letter, a park, a spill,
//!   an open breaker, a pause, a backlog in Kafka) until `metrics.linger`
//!   after the last sign, at most `endpoint_series_max` of them (marked
//!   ones first, then fresh failures, then lasting states; see
//!   [`choose`]). How many were left out is a gauge of its own.
//!
//! An endpoint's series carry its lifetime values whenever they show, so
//! each series only ever grows. The first scrape that shows an endpoint an
//! earlier scrape passed over exports, for the counters its tenant sums
//! too, the values of that earlier scrape: the trouble that brought the
//! series is then an increase `rate()` can see.
//!
//! A tenant's sums must only grow too, or `rate()` reads a drop as a
//! counter reset: what a deleted endpoint counted, or what an endpoint
//! counted before it moved to another tenant, stays in its old tenant's
//! sums (`retired`) for as long as that tenant has endpoints here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use super::endpoint::{EndpointCounters, LazyCounters, LATENCY_BOUNDS};
use super::{MetricsConfig, ATTEMPT_RESULTS, BREAKER_STATES, DELIVERY_OUTCOMES, PARK_REASONS};
use MetricType::{COUNTER, GAUGE, HISTOGRAM};

/// The tenant counters: outcomes, results, then throttled, spilled, lost.
const TENANT_COUNTERS: usize = DELIVERY_OUTCOMES.len() + ATTEMPT_RESULTS.len() + 3;
type Totals = [u64; TENANT_COUNTERS];

fn totals(c: &EndpointCounters) -> Totals {
    let mut t = [0; TENANT_COUNTERS];
    let (outcomes, results) = (c.outcomes(), c.results());
    t[..5].copy_from_slice(&outcomes);
    t[5..8].copy_from_slice(&results);
    t[8] = c.throttled.get();
    t[9] = c.spilled.get();
    t[10] = c.backlog_lost.get();
    t
}

fn add(into: &mut Totals, from: &Totals) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

struct Entry {
    transport: Box<str>,
    tenant: Option<Arc<str>>,
    detailed: bool,
    counters: Arc<LazyCounters>,
    /// What this endpoint counted before it joined its current tenant: its
    /// share of that tenant's sums is what it counted since.
    base: Option<Box<Totals>>,
    /// The last scrape that saw trouble of any kind (see
    /// [`EndpointCounters::unwell`] and [`trouble`]).
    last_trouble: Option<Instant>,
    /// The last scrape that saw a trouble counter move: a fresh failure,
    /// which ranks above a lasting state when places are short.
    last_change: Option<Instant>,
    /// Its counted totals at the previous scrape: what its series show in
    /// the first scrape that shows them, so that `rate()` and `increase()`
    /// see the trouble that put them there.
    /// Boxed, and `None` while all zero: most of 100,000 endpoints never
    /// count anything.
    prev: Option<Box<Totals>>,
    /// Shown in the previous scrape.
    shown: bool,
    /// Seen by a scrape before (`prev` holds its totals then, `None` for
    /// zeros).
    scraped: bool,
}

/// The trouble counters among the totals: failed attempts (retry,
/// permanent), dead letters, parks, throttles, spills, losses.
fn trouble(t: &Totals) -> u64 {
    // outcomes: delivered, dead_lettered, retried, parked, deduplicated;
    // results: delivered, retry, permanent; then throttled, spilled, lost.
    t[1] + t[3] + t[6] + t[7] + t[8] + t[9] + t[10]
}

impl Entry {
    fn tenant_share(&self) -> Totals {
        self.share_of(&totals(self.counters.peek()))
    }

    /// Its share of its tenant's sums, given its totals now.
    fn share_of(&self, now: &Totals) -> Totals {
        let mut t = *now;
        if let Some(base) = &self.base {
            for (a, b) in t.iter_mut().zip(base.iter()) {
                *a = a.saturating_sub(*b);
            }
        }
        t
    }
}

#[derive(Default)]
struct Inner {
    config: MetricsConfig,
    entries: HashMap<Arc<str>, Entry>,
    retired: HashMap<Option<Arc<str>>, Totals>,
}

/// Every endpoint's counters, and the collector that exports them.
pub struct EndpointTable {
    inner: Mutex<Inner>,
    descs: Vec<Desc>,
}

/// Each family the table exports: name, help, type, label names (sorted, as
/// the text format shows them).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const fn family(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind,
        labels,
    }
}

const DELIVERIES: usize = 0;
const ATTEMPTS: usize = 1;
const ATTEMPT_DURATION: usize = 2;
const QUEUE_DEPTH: usize = 3;
const IN_FLIGHT: usize = 4;
const PARKED: usize = 5;
const BREAKER_STATE: usize = 6;
const BREAKER_TRANSITIONS: usize = 7;
const CONCURRENCY_LIMIT: usize = 8;
const RATE_LIMIT_WAITS: usize = 9;
const PAUSED: usize = 10;
const DISABLED: usize = 11;
const SPILLED: usize = 12;
const BACKLOG: usize = 13;
const BACKLOG_AGE: usize = 14;
const DRAINED: usize = 15;
const LOST: usize = 16;
const SPILLING: usize = 17;
const THROTTLED: usize = 18;
const BLOCKED_KEYS: usize = 19;
const BLOCKED_AGE: usize = 20;
const T_DELIVERIES: usize = 21;
const T_ATTEMPTS: usize = 22;
const T_THROTTLED: usize = 23;
const T_SPILLED: usize = 24;
const T_LOST: usize = 25;
const T_ENDPOINTS: usize = 26;
const T_TROUBLED: usize = 27;
const SHOWN: usize = 28;
const HIDDEN: usize = 29;

const FAMILIES: [Family; 30] = [
    family("dispatcher_deliveries_total", "Deliveries by outcome: delivered and dead_lettered are final; retried (waiting in memory), parked (waiting in a retry topic) and deduplicated (already delivered, not sent again) are steps.", COUNTER, &["endpoint", "outcome", "transport"]),
    family("dispatcher_delivery_attempts_total", "Send attempts by result (delivered, retry, permanent).", COUNTER, &["endpoint", "result", "transport"]),
    family("dispatcher_delivery_attempt_duration_seconds", "Time of one send attempt, from request to classified response.", HISTOGRAM, &["endpoint", "transport"]),
    family("dispatcher_endpoint_queue_depth", "Deliveries waiting in an endpoint's inbox (in memory; a backlog beyond it waits in Kafka).", GAUGE, &["endpoint"]),
    family("dispatcher_endpoint_in_flight", "Sends in flight to an endpoint.", GAUGE, &["endpoint"]),
    family("dispatcher_parked_total", "Deliveries written to a retry topic to wait there (retry, throttled, breaker_open, paused, not_due).", COUNTER, &["endpoint", "reason"]),
    family("dispatcher_endpoint_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.", GAUGE, &["endpoint"]),
    family("dispatcher_endpoint_breaker_transitions_total", "Circuit breaker state changes, by the state entered.", COUNTER, &["endpoint", "to"]),
    family("dispatcher_endpoint_concurrency_limit", "Sends an endpoint may have in flight now (max_in_flight, or the adaptive limit).", GAUGE, &["endpoint"]),
    family("dispatcher_endpoint_rate_limit_waits_total", "Times a send waited for the endpoint's rate limit.", COUNTER, &["endpoint"]),
    family("dispatcher_endpoint_paused", "1 while an endpoint is paused (its deliveries wait in Kafka).", GAUGE, &["endpoint"]),
    family("dispatcher_endpoint_disabled", "1 after an endpoint answered 410 Gone (its deliveries are dead-lettered until resumed).", GAUGE, &["endpoint"]),
    family("dispatcher_spilled_total", "Deliveries written to the spill topic because their endpoint did not keep up (each is written once).", COUNTER, &["endpoint"]),
    family("dispatcher_endpoint_backlog_deliveries", "Deliveries of an endpoint waiting in Kafka (spilled, or due retries) for room in its lane, in the partitions this replica owns.", GAUGE, &["endpoint"]),
    family("dispatcher_endpoint_backlog_oldest_age_seconds", "How long the oldest delivery of an endpoint's backlog in Kafka has waited there.", GAUGE, &["endpoint"]),
    family("dispatcher_backlog_drained_total", "Deliveries brought back from an endpoint's backlog in Kafka to its lane.", COUNTER, &["endpoint"]),
    family("dispatcher_backlog_lost_total", "Deliveries of an endpoint's backlog deleted from Kafka (retention) before they came back: lost.", COUNTER, &["endpoint"]),
    family("dispatcher_endpoint_spilling", "1 while an endpoint's fresh deliveries go to the spill topic (it did not keep up and its backlog is not drained yet).", GAUGE, &["endpoint"]),
    family("dispatcher_endpoint_throttled_total", "Answers asking the dispatcher to slow down (429, or 502/503/504 with Retry-After): the endpoint waits, no attempt is spent, the breaker does not count it.", COUNTER, &["endpoint"]),
    family("dispatcher_endpoint_blocked_keys", "Keys of an ordered endpoint (ordering:) whose next delivery waits for a retry, holding back the later deliveries of that key.", GAUGE, &["endpoint"]),
    family("dispatcher_endpoint_blocked_key_oldest_age_seconds", "How long the longest blocked key of an ordered endpoint has waited (0 when none is blocked).", GAUGE, &["endpoint"]),
    family("dispatcher_tenant_deliveries_total", "Deliveries of a tenant's endpoints by outcome (as dispatcher_deliveries_total), summed over all of them.", COUNTER, &["outcome", "tenant"]),
    family("dispatcher_tenant_delivery_attempts_total", "Send attempts to a tenant's endpoints by result (as dispatcher_delivery_attempts_total).", COUNTER, &["result", "tenant"]),
    family("dispatcher_tenant_throttled_total", "Throttled answers from a tenant's endpoints (as dispatcher_endpoint_throttled_total).", COUNTER, &["tenant"]),
    family("dispatcher_tenant_spilled_total", "Deliveries of a tenant's endpoints written to the spill topic (as dispatcher_spilled_total).", COUNTER, &["tenant"]),
    family("dispatcher_tenant_backlog_lost_total", "Deliveries of a tenant's endpoints lost from their backlog in Kafka (as dispatcher_backlog_lost_total).", COUNTER, &["tenant"]),
    family("dispatcher_tenant_endpoints", "Endpoints of a tenant that this replica runs.", GAUGE, &["tenant"]),
    family("dispatcher_tenant_endpoints_troubled", "Endpoints of a tenant with trouble now or within metrics.linger (the ones that have series of their own, within metrics.endpoint_series_max).", GAUGE, &["tenant"]),
    family("dispatcher_metrics_endpoints_shown", "Endpoints exported with series of their own in this scrape (see metrics.endpoint_series).", GAUGE, &[]),
    family("dispatcher_metrics_troubled_endpoints_hidden", "Marked or troubled endpoints left without series of their own because metrics.endpoint_series_max were shown already.", GAUGE, &[]),
];

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

fn counter(labels: Vec<LabelPair>, v: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v as f64);
    let mut m = proto::Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels);
    m.set_gauge(g);
    m
}

impl Default for EndpointTable {
    fn default() -> Self {
        EndpointTable::new()
    }
}

impl EndpointTable {
    pub fn new() -> EndpointTable {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .expect("static metric definition")
            })
            .collect();
        EndpointTable {
            inner: Mutex::new(Inner::default()),
            descs,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under this lock panics but a bug; the numbers are still
        // right after one.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn configure(&self, config: MetricsConfig) {
        self.lock().config = config;
    }

    /// The counters of endpoint `id`, created at zero the first time; a
    /// second call for the same id returns the same counters, with the
    /// tenant and detail given.
    pub fn register(
        &self,
        id: &str,
        transport: &str,
        tenant: Option<&str>,
        detailed: bool,
    ) -> Arc<LazyCounters> {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get(id) {
            let counters = e.counters.clone();
            drop(inner);
            self.update(id, transport, tenant, detailed);
            return counters;
        }
        let counters = Arc::new(LazyCounters::default());
        inner.entries.insert(
            id.into(),
            Entry {
                transport: transport.into(),
                tenant: tenant.map(Arc::from),
                detailed,
                counters: counters.clone(),
                base: None,
                last_trouble: None,
                last_change: None,
                prev: None,
                shown: false,
                scraped: false,
            },
        );
        counters
    }

    /// An endpoint's tenant, detail or transport changed (an update
    /// through the API).
    pub fn update(&self, id: &str, transport: &str, tenant: Option<&str>, detailed: bool) {
        let mut inner = self.lock();
        let Inner {
            entries, retired, ..
        } = &mut *inner;
        let Some(e) = entries.get_mut(id) else {
            return;
        };
        e.detailed = detailed;
        if *e.transport != *transport {
            e.transport = transport.into();
        }
        if e.tenant.as_deref() != tenant {
            // What it counted so far stays with the tenant it counted for;
            // one read, so nothing counted in between is in neither.
            let now = totals(e.counters.peek());
            add(
                retired.entry(e.tenant.clone()).or_default(),
                &e.share_of(&now),
            );
            e.base = Some(Box::new(now));
            e.tenant = tenant.map(Arc::from);
        }
    }

    /// A deleted endpoint: its series end; what it counted stays in its
    /// tenant's sums.
    pub fn forget(&self, id: &str) {
        let mut inner = self.lock();
        let Inner {
            entries, retired, ..
        } = &mut *inner;
        if let Some(e) = entries.remove(id) {
            add(
                retired.entry(e.tenant.clone()).or_default(),
                &e.tenant_share(),
            );
        }
    }

    /// The counters of endpoint `id`, if it is registered.
    pub fn get(&self, id: &str) -> Option<Arc<LazyCounters>> {
        self.lock().entries.get(id).map(|e| e.counters.clone())
    }

    fn families(&self, now: Instant) -> Vec<MetricFamily> {
        // Under the lock only what must be read together; the series are
        // built after it, so a lane that registers or a park that counts
        // waits for one pass over the endpoints, not for the encoding.
        let (Chosen { shown, hidden }, tenants) = {
            let mut inner = self.lock();
            let chosen = choose(&mut inner, now);
            (chosen, tenant_sums(&mut inner, now))
        };
        let mut out: Vec<Vec<proto::Metric>> = (0..FAMILIES.len()).map(|_| Vec::new()).collect();
        for (id, e) in &shown {
            endpoint_series(&mut out, id, e);
        }
        out[SHOWN].push(gauge(Vec::new(), shown.len() as f64));
        out[HIDDEN].push(gauge(Vec::new(), hidden as f64));
        tenant_series(&mut out, tenants);
        FAMILIES
            .iter()
            .zip(out)
            .map(|(f, metrics)| {
                let mut mf = MetricFamily::default();
                mf.set_name(f.name.to_owned());
                mf.set_help(f.help.to_owned());
                mf.set_field_type(f.kind);
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }
}

struct Chosen {
    shown: Vec<(Arc<str>, EntryView)>,
    /// Marked or troubled endpoints left without series by the cap.
    hidden: usize,
}

/// Look at every endpoint for trouble, then pick the ones shown with their
/// own series (see the module docs).
///
/// When places are short they go, in this order, to the marked endpoints,
/// to those whose trouble counters moved within the linger (a fresh
/// failure), then to those only in a lasting state (paused, disabled, a
/// breaker left open by an idle endpoint, a backlog); within each, to the
/// ones already shown (so a series does not come and go), then to the most
/// recent.
fn choose(inner: &mut Inner, now: Instant) -> Chosen {
    let linger = inner.config.linger;
    let max = inner.config.endpoint_series_max;
    let everyone =
        inner.config.endpoint_series == super::EndpointSeries::All || inner.entries.len() <= max;
    let recent = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) <= linger);
    let mut candidates = Vec::new();
    for (id, e) in inner.entries.iter_mut() {
        let current = totals(e.counters.peek());
        let prev = e.prev.as_deref().copied().unwrap_or_default();
        if trouble(&current) != trouble(&prev) {
            e.last_change = Some(now);
            e.last_trouble = Some(now);
        } else if e.counters.peek().unwell() {
            e.last_trouble = Some(now);
        }
        // An endpoint that an earlier scrape saw without showing it first
        // shows the totals of that scrape; one new since the last scrape
        // shows what it has, as a series created at zero would.
        let first = !e.shown;
        let exported = if first && e.scraped { prev } else { current };
        match &mut e.prev {
            Some(p) => **p = current,
            None if current != Totals::default() => e.prev = Some(Box::new(current)),
            None => {}
        }
        e.shown = false;
        e.scraped = true;
        if everyone || e.detailed || recent(e.last_trouble) {
            let rank = (
                e.detailed,
                recent(e.last_change),
                !first,
                e.last_change,
                e.last_trouble,
            );
            candidates.push((rank, id.clone(), exported));
        }
    }
    let mut hidden = 0;
    if !everyone && candidates.len() > max {
        candidates.sort_by(|(a, a_id, _), (b, b_id, _)| b.cmp(a).then(a_id.cmp(b_id)));
        hidden = candidates.len() - max;
        candidates.truncate(max);
    }
    let shown = candidates
        .into_iter()
        .filter_map(|(_, id, exported)| {
            let e = inner.entries.get_mut(&id)?;
            e.shown = true;
            Some((id, EntryView::of(e, exported)))
        })
        .collect();
    Chosen { shown, hidden }
}

fn troubled(e: &Entry, now: Instant, linger: Duration) -> bool {
    e.last_trouble
        .is_some_and(|t| now.saturating_duration_since(t) <= linger)
}

/// What the series of one shown endpoint need, taken out from under the
/// lock's borrow.
struct EntryView {
    transport: Box<str>,
    /// Outcomes, results, throttled, spilled, lost: as of the previous
    /// scrape on a first showing, else now.
    totals: Totals,
    counters: Arc<LazyCounters>,
}

impl EntryView {
    fn of(e: &Entry, totals: Totals) -> EntryView {
        EntryView {
            transport: e.transport.clone(),
            totals,
            counters: e.counters.clone(),
        }
    }
}

fn endpoint_series(out: &mut [Vec<proto::Metric>], id: &str, e: &EntryView) {
    let c = e.counters.peek();
    let ep = || label("endpoint", id);
    let tr = || label("transport", &e.transport);
    let (outcomes, rest) = e.totals.split_at(DELIVERY_OUTCOMES.len());
    let (results, rest) = rest.split_at(ATTEMPT_RESULTS.len());
    for (outcome, v) in DELIVERY_OUTCOMES.iter().zip(outcomes) {
        out[DELIVERIES].push(counter(vec![ep(), label("outcome", outcome), tr()], *v));
    }
    for (result, v) in ATTEMPT_RESULTS.iter().zip(results) {
        out[ATTEMPTS].push(counter(vec![ep(), label("result", result), tr()], *v));
    }
    for (family, v) in [THROTTLED, SPILLED, LOST].into_iter().zip(rest) {
        out[family].push(counter(vec![ep()], *v));
    }
    let (cumulative, total, sum) = c.attempt_duration.snapshot();
    let mut h = proto::Histogram::default();
    h.set_sample_count(total);
    h.set_sample_sum(sum);
    h.set_bucket(
        LATENCY_BOUNDS
            .iter()
            .zip(cumulative)
            .map(|(bound, n)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = proto::Metric::from_label(vec![ep(), tr()]);
    m.set_histogram(h);
    out[ATTEMPT_DURATION].push(m);
    for (reason, v) in PARK_REASONS.iter().zip(&c.parked_by_reason) {
        out[PARKED].push(counter(vec![ep(), label("reason", reason)], v.get()));
    }
    for (to, v) in BREAKER_STATES.iter().zip(&c.breaker_transitions) {
        out[BREAKER_TRANSITIONS].push(counter(vec![ep(), label("to", to)], v.get()));
    }
    for (family, v) in [
        (RATE_LIMIT_WAITS, &c.rate_limit_waits),
        (DRAINED, &c.backlog_drained),
    ] {
        out[family].push(counter(vec![ep()], v.get()));
    }
    for (family, v) in [
        (QUEUE_DEPTH, &c.queue_depth),
        (IN_FLIGHT, &c.in_flight),
        (BREAKER_STATE, &c.breaker_state),
        (CONCURRENCY_LIMIT, &e.counters.concurrency_limit),
        (PAUSED, &c.paused),
        (DISABLED, &c.disabled),
        (BACKLOG, &c.backlog),
        (SPILLING, &c.spilling),
    ] {
        out[family].push(gauge(vec![ep()], v.get() as f64));
    }
    out[BACKLOG_AGE].push(gauge(vec![ep()], c.backlog_age.get()));
    // Only ordered endpoints have keys: the others would show zeros.
    if e.counters
        .ordered
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        out[BLOCKED_KEYS].push(gauge(vec![ep()], c.blocked_keys.get() as f64));
        let since = c.blocked_since_ms.get();
        let age = match since {
            0 => 0.0,
            _ => (chrono::Utc::now().timestamp_millis() - since).max(0) as f64 / 1000.0,
        };
        out[BLOCKED_AGE].push(gauge(vec![ep()], age));
    }
}

#[derive(Default)]
struct TenantSums {
    counters: Totals,
    endpoints: u64,
    troubled: u64,
}

/// Every tenant's sums: its endpoints' shares plus what it retired.
fn tenant_sums(inner: &mut Inner, now: Instant) -> HashMap<Option<Arc<str>>, TenantSums> {
    let linger = inner.config.linger;
    let mut sums: HashMap<Option<Arc<str>>, TenantSums> = HashMap::new();
    for e in inner.entries.values() {
        let s = sums.entry(e.tenant.clone()).or_default();
        add(&mut s.counters, &e.tenant_share());
        s.endpoints += 1;
        s.troubled += u64::from(troubled(e, now, linger));
    }
    // A tenant with no endpoint left here has no series left: what it
    // retired goes too (a later endpoint of it starts its series anew).
    inner.retired.retain(|tenant, _| sums.contains_key(tenant));
    for (tenant, retired) in &inner.retired {
        if let Some(s) = sums.get_mut(tenant) {
            add(&mut s.counters, retired);
        }
    }
    sums
}

fn tenant_series(out: &mut [Vec<proto::Metric>], sums: HashMap<Option<Arc<str>>, TenantSums>) {
    for (tenant, s) in sums {
        let t = || label("tenant", tenant.as_deref().unwrap_or(""));
        let (outcomes, rest) = s.counters.split_at(DELIVERY_OUTCOMES.len());
        let (results, rest) = rest.split_at(ATTEMPT_RESULTS.len());
        for (outcome, v) in DELIVERY_OUTCOMES.iter().zip(outcomes) {
            out[T_DELIVERIES].push(counter(vec![label("outcome", outcome), t()], *v));
        }
        for (result, v) in ATTEMPT_RESULTS.iter().zip(results) {
            out[T_ATTEMPTS].push(counter(vec![label("result", result), t()], *v));
        }
        for (family, v) in [T_THROTTLED, T_SPILLED, T_LOST].into_iter().zip(rest) {
            out[family].push(counter(vec![t()], *v));
        }
        out[T_ENDPOINTS].push(gauge(vec![t()], s.endpoints as f64));
        out[T_TROUBLED].push(gauge(vec![t()], s.troubled as f64));
    }
}

/// The table as the registry sees it.
pub struct TableCollector(pub Arc<EndpointTable>);

impl Collector for TableCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.families(Instant::now())
    }
}

#[cfg(test)]
mod tests;
