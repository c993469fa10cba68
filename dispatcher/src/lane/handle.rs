//! An endpoint's lane as everyone else holds it, and the lane made at its
//! endpoint's first work.
//!
//! A replica may serve 100,000 endpoints, most of them idle at any moment.
//! An endpoint that has had no work since the replica started holds only
//! its [`LaneCore`] (identity, switches, counters' handle) and the
//! settings its lane will be made from: no inbox, no runner, no lane state,
//! no place in the lanes' [`Front`](super::Front). The first delivery
//! routed to it, its backlog's reader starting, or its deletion makes them
//! ([`LaneCore::inbox`]); from then on they stay while the endpoint
//! exists, and the lane's task still runs only while it has work (see
//! [`Runner`]).
//!
//! Until then, a change of the endpoint replaces those settings, and the
//! questions the source asks of every lane (is it spilling, does it hold
//! anything fresh) have the answer of an empty inbox
//! ([`LaneCore::live`] is `None`).

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::inbox::TenantShare;
use super::{returned_cap, Runner};
use super::{Concurrency, Control, Inbox, Lane, LaneDeps, LaneSettings, LaneShared, LaneUpdate};
use crate::metrics::EndpointMetrics;

/// The source's and the readers' handle on a lane: one pointer, cloned
/// into every routing snapshot.
#[derive(Clone)]
pub struct LaneHandle(Arc<LaneCore>);

impl Deref for LaneHandle {
    type Target = LaneCore;
    fn deref(&self) -> &LaneCore {
        &self.0
    }
}

/// What an endpoint's lane is while it exists, whether made yet or not.
pub struct LaneCore {
    pub endpoint_id: Arc<str>,
    /// The lane's index: how holds and spill marks name it.
    pub index: usize,
    pub control: Arc<Control>,
    pub metrics: EndpointMetrics,
    /// Its inbox and runner, once it had work.
    live: OnceLock<Live>,
    /// What it will be made from; `None` once it is.
    recipe: Mutex<Option<Box<Recipe>>>,
    shared: Arc<LaneShared>,
}

// At 100,000 idle endpoints every word counts: a core of 112 bytes, with
// its reference counts, fits an allocation class of 128.
const _: () = assert!(std::mem::size_of::<LaneCore>() <= 112);
// And what it is made from, in one allocation of 128.
const _: () = assert!(std::mem::size_of::<Recipe>() <= 128);

struct Live {
    inbox: Arc<Inbox>,
    /// Owns the lane while no task runs it (its inbox and switches wake it
    /// through a weak reference).
    _runner: Arc<Runner>,
}

struct Recipe {
    settings: LaneSettings,
    /// Its tenant's account, taken when the endpoint is added, so that the
    /// tenants' shares of the budget count every tenant with an endpoint,
    /// not only those whose lanes were made.
    tenant: Arc<TenantShare>,
}

/// The handle on a new endpoint's lane, which is made at its first work.
pub fn create(
    settings: LaneSettings,
    shared: Arc<LaneShared>,
    metrics: EndpointMetrics,
) -> LaneHandle {
    let control = Arc::new(Control::default());
    if settings.paused {
        control.paused.store(true, Ordering::Release);
        // Only a paused one writes here: an endpoint allocates its counters
        // when it first has something to count (see `LazyCounters`).
        metrics.paused.set(1);
    }
    let limit = Concurrency::new(settings.max_in_flight, settings.adaptive_concurrency).limit();
    metrics.concurrency_limit().set(limit as i64);
    metrics.set_ordered(settings.ordering.is_some());
    let tenant = shared.shares.tenant(settings.tenant.as_deref());
    LaneHandle(Arc::new(LaneCore {
        endpoint_id: settings.endpoint_id.clone(),
        index: settings.index,
        control,
        metrics,
        live: OnceLock::new(),
        recipe: Mutex::new(Some(Box::new(Recipe { settings, tenant }))),
        shared,
    }))
}

impl LaneCore {
    /// Its inbox, making the lane if it has not been yet: for callers
    /// about to give it work.
    pub fn inbox(&self) -> &Inbox {
        match self.live.get() {
            Some(live) => &live.inbox,
            None => &self.make().inbox,
        }
    }

    /// Its inbox if the lane was made; `None` is an empty, open inbox.
    pub fn live(&self) -> Option<&Inbox> {
        self.live.get().map(|l| &*l.inbox)
    }

    /// Whether the lane was made (its endpoint had work, or was deleted,
    /// since the replica started).
    pub fn is_made(&self) -> bool {
        self.live.get().is_some()
    }

    /// Hand the lane a change of its endpoint. Until the lane is made, new
    /// settings replace the ones it will be made from; a deletion makes it,
    /// to dead-letter what of its work is under a hold in Kafka.
    pub fn update(&self, update: LaneUpdate) {
        if let LaneUpdate::Settings(new) = &update {
            self.metrics.set_ordered(new.ordering.is_some());
        }
        let mut recipe = self.recipe();
        match (update, recipe.as_mut()) {
            (LaneUpdate::Settings(new), Some(r)) => {
                let limit = Concurrency::new(new.max_in_flight, new.adaptive_concurrency).limit();
                self.metrics.concurrency_limit().set(limit as i64);
                if new.tenant != r.settings.tenant {
                    r.tenant = self.shared.shares.tenant(new.tenant.as_deref());
                }
                // Its identity stays, whatever the update says (as a made
                // lane's does).
                let (index, id) = (r.settings.index, r.settings.endpoint_id.clone());
                r.settings = *new;
                r.settings.index = index;
                r.settings.endpoint_id = id;
            }
            (update @ LaneUpdate::Delete, Some(_)) => {
                drop(recipe);
                self.make();
                self.control.update(update);
            }
            (update, None) => {
                drop(recipe);
                self.control.update(update);
            }
        }
    }

    /// Set its pause and disable switches, as the endpoint store says. A
    /// made lane shows them in its gauges at its next look; one not made
    /// yet shows them at once (writing only what differs, so that an idle
    /// endpoint left running allocates no counters).
    pub fn set_switches(&self, paused: bool, disabled: bool) {
        // Under the recipe's lock, as making the lane is: a change lands
        // either before the lane reads the switches or after its runner
        // can be woken by it, never between (a resume lost there would
        // leave a made lane refusing everything).
        let _recipe = self.recipe();
        self.control.set(paused, disabled);
        if self.is_made() {
            return;
        }
        let shown = self.metrics.peek();
        if shown.paused.get() != paused as i64 {
            self.metrics.paused.set(paused as i64);
        }
        if shown.disabled.get() != disabled as i64 {
            self.metrics.disabled.set(disabled as i64);
        }
    }

    /// Shutdown: the lane takes nothing more, finishes what it holds and
    /// ends; one not made yet is made closed if anything reaches it.
    pub fn close(&self) {
        let _recipe = self.recipe();
        self.control.closed.store(true, Ordering::Release);
        if let Some(live) = self.live.get() {
            live.inbox.close();
        }
    }

    fn recipe(&self) -> MutexGuard<'_, Option<Box<Recipe>>> {
        self.recipe.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make the lane, once. The recipe's lock is held throughout, so an
    /// update either changes the recipe before it is used or finds the
    /// lane made and goes to it.
    #[cold]
    fn make(&self) -> &Live {
        let mut recipe = self.recipe();
        if let Some(live) = self.live.get() {
            return live;
        }
        let Recipe { settings, tenant } = *recipe
            .take()
            .expect("a lane not made yet keeps what it is made from");
        let live = self.live.get_or_init(|| self.build(settings, tenant));
        drop(recipe);
        live
    }

    fn build(&self, settings: LaneSettings, tenant: Arc<TenantShare>) -> Live {
        let shared = &self.shared;
        let inbox = Arc::new(Inbox::new(
            settings.queue_capacity,
            returned_cap(settings.max_in_flight),
            settings.index,
            shared.evictions.clone(),
            shared.shares.clone(),
            tenant,
        ));
        if self.control.paused() {
            inbox.set_accepting(false);
        }
        let deps = LaneDeps {
            share: shared.share.clone(),
            shared: shared.clone(),
            metrics: self.metrics.clone(),
        };
        let lane = Lane::new(settings, deps, self.control.clone(), inbox.clone());
        let runner = Runner::new(lane, shared.started.clone(), shared.lanes_made.clone());
        self.control.waker.set(&runner);
        inbox.set_waker(&runner);
        if self.control.closed.load(Ordering::Acquire) {
            inbox.close();
        }
        Live {
            inbox,
            _runner: runner,
        }
    }
}
