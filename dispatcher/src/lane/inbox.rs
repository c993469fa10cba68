//! A lane's inbox: the bounded queue between the readers (the source with
//! fresh deliveries, the internal-topic readers with returned ones) and the
//! lane's task (a delivery queued for a lane that has none starts one).
//! Nobody ever waits on it: a full inbox refuses, and the
//! caller moves the delivery to Kafka instead (fresh ones are spilled,
//! returned ones stay under their endpoint's hold, see
//! [`crate::offsets`]).
//!
//! Three flags let the lane steer its feeders without a channel round trip:
//! `accepting` (false while it cannot send at all: paused, breaker open),
//! `spilling` (fresh deliveries go to the spill topic, so a backlog that
//! started there keeps its order) and `evict` (the source should move the
//! fresh deliveries still queued to the spill topic: the lane lags the
//! others, or it is full).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::front::{Front, Progress};
use super::runner::{Runner, Waker};
use super::Job;

/// Lanes that asked the source to spill what they queued: the source acts
/// on them even when no new event comes for those lanes.
#[derive(Default)]
pub struct Evictions {
    lanes: Mutex<Vec<usize>>,
    notify: Notify,
}

impl Evictions {
    fn push(&self, lane: usize) {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(lane);
        self.notify.notify_one();
    }

    /// Resolves when some lane asked.
    pub async fn requested(&self) {
        self.notify.notified().await
    }

    /// The lanes that asked since the last call.
    pub fn take(&self) -> Vec<usize> {
        std::mem::take(&mut *self.lanes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What the lanes share: how the memory budget is shared out between them,
/// and their [`Front`].
///
/// A lane may hold up to one and a half times an even share of the budget
/// among the lanes that hold anything. When every lane is as slow as the
/// others the budget fills first and pauses the source (back-pressure); a
/// lane slower than the rest reaches its share first and spills.
///
/// Tenants get the same between them: the lanes of one tenant together may
/// hold up to one and a half times an even share among the tenants whose
/// lanes hold anything, and never more than half the budget while other
/// tenants have lanes. Past it, the tenant's lanes that hold at
/// least their even part of what it holds take nothing more (they spill);
/// its lanes that keep up still do. A tenant that floods its lanes
/// therefore spills before the budget is full: the source reads on, and the
/// other tenants' events behind the flood in the same partitions are read
/// and sent at their own pace. Endpoints without a tenant have no such
/// share, and with one tenant or none nothing changes.
pub struct Shares {
    budget: usize,
    /// Lanes with anything queued.
    active: AtomicUsize,
    /// Tenants with a lane that has anything queued.
    active_tenants: AtomicUsize,
    /// Tenants with a lane at all (their accounts count themselves out when
    /// their last lane goes).
    known_tenants: Arc<AtomicUsize>,
    tenants: Mutex<HashMap<Arc<str>, Weak<TenantShare>>>,
    /// The one account of all lanes without a tenant, which no share
    /// bounds.
    unnamed: Arc<TenantShare>,
    pub front: Arc<Front>,
}

/// What one tenant's lanes hold together. Lanes without a tenant share one
/// too, which no share bounds (`known` is `None`).
#[derive(Default)]
pub struct TenantShare {
    bytes: AtomicUsize,
    /// Its lanes with anything queued.
    active: AtomicUsize,
    /// The count of known tenants, which this one leaves when dropped.
    known: Option<Arc<AtomicUsize>>,
}

impl TenantShare {
    fn named(&self) -> bool {
        self.known.is_some()
    }

    // The account of the lanes without a tenant bounds nothing and is
    // shared by all of them: it counts nothing, so that their offers do
    // not all write one cache line.
    fn add(&self, bytes: usize) {
        if self.named() {
            self.bytes.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    fn sub(&self, bytes: usize) {
        if self.named() {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

impl Drop for TenantShare {
    fn drop(&mut self) {
        if let Some(known) = &self.known {
            known.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Shares {
    pub fn new(budget: usize, front: Arc<Front>) -> Shares {
        Shares {
            budget,
            active: AtomicUsize::new(0),
            active_tenants: AtomicUsize::new(0),
            known_tenants: Arc::new(AtomicUsize::new(0)),
            tenants: Mutex::default(),
            unnamed: Arc::default(),
            front,
        }
    }

    fn share(&self) -> usize {
        let active = self.active.load(Ordering::Acquire).max(1);
        self.budget / active * 3 / 2
    }

    fn tenant_share(&self) -> usize {
        // One tenant: the lanes' shares are all there is.
        if self.known_tenants.load(Ordering::Acquire) <= 1 {
            return usize::MAX;
        }
        // Never more than half, though it is alone in the queues: the
        // others' events may be unread behind its own, and only room in the
        // budget lets the source reach them. A paused source resumes once
        // the budget is back at three quarters, so a tenant holding three
        // quarters would keep it paused.
        let active = self.active_tenants.load(Ordering::Acquire).max(1);
        (self.budget / active * 3 / 2).min(self.budget / 2)
    }

    /// The account of `tenant`'s lanes, shared by all its lanes while any
    /// is alive; the lanes without a tenant share one, unbounded.
    pub fn tenant(&self, tenant: Option<&str>) -> Arc<TenantShare> {
        let Some(tenant) = tenant else {
            return self.unnamed.clone();
        };
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tenants.get(tenant).and_then(Weak::upgrade) {
            return t;
        }
        // Tenants whose last lane went are forgotten when a new one comes.
        tenants.retain(|_, t| t.strong_count() > 0);
        self.known_tenants.fetch_add(1, Ordering::AcqRel);
        let t = Arc::new(TenantShare {
            bytes: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            known: Some(self.known_tenants.clone()),
        });
        tenants.insert(tenant.into(), Arc::downgrade(&t));
        t
    }

    fn lane_active(&self, tenant: &TenantShare) {
        self.active.fetch_add(1, Ordering::AcqRel);
        if tenant.named() && tenant.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.active_tenants.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn lane_idle(&self, tenant: &TenantShare) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        if tenant.named() && tenant.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.active_tenants.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Why [`Inbox::give_back`] refused a delivery (handed back with it).
pub enum Refused {
    /// No room now: drop it, and its hold keeps its place in Kafka.
    NoRoom(Job),
    /// The lane takes nothing more: it is shutting down or its endpoint was
    /// deleted.
    Closed(Job),
}

/// A fresh delivery and when it was queued, in reading time (see
/// [`Front`]).
struct Queued {
    job: Job,
    stamp: u64,
}

struct Queues {
    fresh: VecDeque<Queued>,
    returned: VecDeque<Job>,
    /// What the queued deliveries weigh (see [`weight`]).
    bytes: usize,
    /// Whose account they count in too (see [`Queues::tenant_bytes`]).
    tenant: Arc<TenantShare>,
}

impl Queues {
    fn len(&self) -> usize {
        self.fresh.len() + self.returned.len()
    }

    /// What they weigh in their tenant's account: each its [`weight`] and
    /// its record's bookkeeping (see [`tenant_weight`]).
    fn tenant_bytes(&self) -> usize {
        self.bytes + self.len() * crate::offsets::RECORD_OVERHEAD
    }
}

/// What a queued delivery counts against its lane's share: its event (as if
/// the lane alone held it) and its bookkeeping.
fn weight(job: &Job) -> usize {
    job.event.payload().len() + crate::offsets::DELIVERY_OVERHEAD
}

/// What it counts against its tenant's share: its [`weight`] and its
/// record's bookkeeping, as if the record were held for it alone. That is
/// what it keeps in the budget once its record's other deliveries are sent
/// or spilled (a record stays whole in memory while any delivery of it is
/// queued), and an upper bound before: a tenant whose endpoints share the
/// same events reaches its share sooner, never later.
fn tenant_weight(job: &Job) -> usize {
    weight(job) + crate::offsets::RECORD_OVERHEAD
}

pub struct Inbox {
    q: Mutex<Queues>,
    /// The lane waits here for work.
    work: Notify,
    /// Readers of internal topics wait here for room.
    room: Notify,
    /// Fresh and returned deliveries queued at most (the endpoint's
    /// `queue_capacity`, which a change of the endpoint may move).
    cap: AtomicUsize,
    /// Returned deliveries queued at most: enough to keep the lane's sends
    /// busy, no more (the rest waits in Kafka, where it costs no memory).
    returned_cap: AtomicUsize,
    accepting: AtomicBool,
    spilling: AtomicBool,
    evict: AtomicBool,
    closed: AtomicBool,
    /// Its endpoint was deleted: once closed, what it refuses is dead.
    deleted: AtomicBool,
    lane: usize,
    evictions: Arc<Evictions>,
    shares: Arc<Shares>,
    /// What the front sees of this lane (kept under the queues' lock).
    progress: Arc<Progress>,
    /// Its lane may have no task: work starts one.
    waker: Waker,
}

impl Inbox {
    pub fn new(
        cap: usize,
        returned_cap: usize,
        lane: usize,
        evictions: Arc<Evictions>,
        shares: Arc<Shares>,
        tenant: Arc<TenantShare>,
    ) -> Inbox {
        Inbox {
            lane,
            evictions,
            progress: shares.front.lane(),
            waker: Waker::default(),
            shares,
            q: Mutex::new(Queues {
                fresh: VecDeque::new(),
                returned: VecDeque::new(),
                bytes: 0,
                tenant,
            }),
            work: Notify::new(),
            room: Notify::new(),
            cap: AtomicUsize::new(cap.max(1)),
            returned_cap: AtomicUsize::new(returned_cap.clamp(1, cap.max(1))),
            accepting: AtomicBool::new(true),
            spilling: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        }
    }

    pub(super) fn set_waker(&self, runner: &Arc<Runner>) {
        self.waker.set(runner);
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    fn returned_cap(&self) -> usize {
        self.returned_cap.load(Ordering::Relaxed)
    }

    /// The endpoint changed: new bounds for what may queue.
    pub(super) fn set_caps(&self, cap: usize, returned_cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
        self.returned_cap
            .store(returned_cap.clamp(1, cap.max(1)), Ordering::Relaxed);
    }

    /// The endpoint moved to another tenant: what it holds moves with it.
    pub(super) fn set_tenant(&self, tenant: Arc<TenantShare>) {
        let mut q = self.lock();
        if Arc::ptr_eq(&q.tenant, &tenant) {
            return;
        }
        if q.len() > 0 {
            let held = q.tenant_bytes();
            self.shares.lane_idle(&q.tenant);
            q.tenant.sub(held);
            self.shares.lane_active(&tenant);
            tenant.add(held);
        }
        q.tenant = tenant;
    }

    /// Queue a fresh delivery, or give it back to be spilled: when the
    /// lane spills already, cannot send, or is full (`queue_capacity`, its
    /// share of the memory budget, or its tenant's). A full lane starts
    /// spilling, and asks for what it queued to be spilled first, so its
    /// backlog keeps the source's order.
    pub fn offer(&self, job: Job) -> Result<(), Job> {
        if self.spilling.load(Ordering::Acquire) || !self.accepting.load(Ordering::Acquire) {
            return Err(job);
        }
        let w = weight(&job);
        let tw = tenant_weight(&job);
        let mut q = self.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(job);
        }
        let len = q.len();
        if len >= self.cap()
            || (len > 0 && q.bytes + w > self.shares.share())
            || (len > 0 && self.over_tenant_share(&q, tw))
        {
            drop(q);
            self.request_eviction();
            return Err(job);
        }
        self.push(&mut q, w);
        let stamp = self.shares.front.now();
        if q.fresh.is_empty() {
            self.progress.set_oldest(Some(stamp));
        }
        q.fresh.push_back(Queued { job, stamp });
        drop(q);
        self.work.notify_one();
        self.waker.wake();
        Ok(())
    }

    /// Its tenant holds its share, and this lane at least its even part of
    /// that: it is one of the tenant's lanes that do not keep up. (Its
    /// lanes that do still take deliveries.)
    fn over_tenant_share(&self, q: &Queues, tw: usize) -> bool {
        if !q.tenant.named() {
            return false;
        }
        let held = q.tenant.bytes.load(Ordering::Acquire);
        let lanes = q.tenant.active.load(Ordering::Acquire).max(1);
        held + tw > self.shares.tenant_share() && q.tenant_bytes().saturating_mul(lanes) >= held
    }

    fn push(&self, q: &mut Queues, w: usize) {
        if q.len() == 0 {
            self.shares.lane_active(&q.tenant);
        }
        q.bytes += w;
        q.tenant.add(w + crate::offsets::RECORD_OVERHEAD);
    }

    /// Account for `jobs` leaving the queues.
    fn left<'j>(&self, q: &mut Queues, jobs: impl Iterator<Item = &'j Job>) {
        // `jobs` have left the queues already: what the tenant's account
        // loses is their weights and one record's bookkeeping each.
        let before = q.bytes;
        let mut removed = 0;
        for job in jobs {
            q.bytes = q.bytes.saturating_sub(weight(job));
            removed += 1;
        }
        if removed > 0 && q.len() == 0 {
            q.bytes = 0;
            self.shares.lane_idle(&q.tenant);
        }
        let gone = before - q.bytes + removed * crate::offsets::RECORD_OVERHEAD;
        q.tenant.sub(gone);
    }

    /// Queue a delivery read back from an internal topic, or refuse it:
    /// without room the caller drops it, which puts it back under its hold;
    /// a closed lane (its endpoint deleted, or shutdown) will never take it.
    pub fn give_back(&self, job: Job) -> Result<(), Refused> {
        if self.closed.load(Ordering::Acquire) {
            // At shutdown the record is read again after the restart; of a
            // deleted endpoint it is dead-lettered by the caller.
            return Err(match self.deleted.load(Ordering::Acquire) {
                true => Refused::Closed(job),
                false => Refused::NoRoom(job),
            });
        }
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Refused::NoRoom(job));
        }
        let mut q = self.lock();
        if q.returned.len() >= self.returned_cap() || q.len() >= self.cap() {
            return Err(Refused::NoRoom(job));
        }
        self.push(&mut q, weight(&job));
        q.returned.push_back(job);
        drop(q);
        self.work.notify_one();
        self.waker.wake();
        Ok(())
    }

    /// Resolves once returned deliveries may be given back again (the lane
    /// accepts and has used up half of what it was given).
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() || self.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub fn has_room(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
            && self.lock().returned.len() <= self.returned_cap() / 2
    }

    /// Wakes the lane: work, or a change of its switches.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.work.notified()
    }

    pub fn wake(&self) {
        self.work.notify_one();
        self.waker.wake();
    }

    pub fn is_spilling(&self) -> bool {
        self.spilling.load(Ordering::Acquire)
    }

    /// Fresh deliveries go to the inbox again (the source decides when:
    /// see [`crate::spill`]).
    pub fn stop_spilling(&self) {
        self.spilling.store(false, Ordering::Release);
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub(super) fn set_accepting(&self, accepting: bool) {
        let before = self.accepting.swap(accepting, Ordering::AcqRel);
        if accepting && !before {
            self.room.notify_waiters();
        }
    }

    /// The lane asks the source to spill what it has queued, and whatever
    /// follows until the backlog is drained.
    pub fn request_eviction(&self) {
        self.spilling.store(true, Ordering::Release);
        if !self.evict.swap(true, Ordering::AcqRel) {
            self.evictions.push(self.lane);
        }
    }

    /// For the source: the fresh deliveries to spill now, in order, if the
    /// lane asked for it. Spilling them from the source task, the only one
    /// that spills fresh deliveries, keeps them in order with later ones.
    pub fn take_evicted(&self) -> Option<Vec<Job>> {
        if !self.evict.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut q = self.lock();
        let jobs: Vec<Job> = q.fresh.drain(..).map(|f| f.job).collect();
        self.fresh_changed(&q);
        self.left(&mut q, jobs.iter());
        drop(q);
        // The lane may have nothing left to do now (a paused one idles).
        self.work.notify_one();
        Some(jobs)
    }

    pub fn evict_requested(&self) -> bool {
        self.evict.load(Ordering::Acquire)
    }

    /// No more fresh or returned deliveries: the lane finishes what it has.
    pub fn close(&self) {
        // Under the queues' lock, as `offer` looks: a delivery is queued
        // before the close (and the lane, which looks again, finishes it)
        // or refused after it, never left in an inbox no task will read.
        let q = self.lock();
        self.closed.store(true, Ordering::Release);
        drop(q);
        self.work.notify_one();
        self.room.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Its endpoint was deleted: it takes what comes back from Kafka only
    /// to dead-letter it, and refuses it as dead once closed.
    pub(super) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.set_accepting(true);
        self.spilling.store(false, Ordering::Release);
        self.work.notify_one();
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The next delivery for the lane: a returned one when `prefer_returned`
    /// or when no fresh one waits.
    pub(super) fn pop(&self, prefer_returned: bool) -> Option<Job> {
        let mut q = self.lock();
        let fresh = |q: &mut Queues| {
            q.fresh.pop_front().map(|f| {
                self.progress.started(f.stamp, self.shares.front.now());
                self.fresh_changed(q);
                f.job
            })
        };
        let job = if prefer_returned {
            q.returned.pop_front().or_else(|| fresh(&mut q))
        } else {
            fresh(&mut q).or_else(|| q.returned.pop_front())
        };
        if let Some(job) = &job {
            self.left(&mut q, std::iter::once(job));
        }
        let wake_readers = job.is_some() && q.returned.len() == self.returned_cap() / 2;
        drop(q);
        if wake_readers {
            self.room.notify_waiters();
        }
        job
    }

    /// Every returned delivery queued (the lane drops them when it cannot
    /// send: they go back under their holds).
    pub(super) fn take_returned(&self) -> Vec<Job> {
        let mut q = self.lock();
        let jobs: Vec<Job> = q.returned.drain(..).collect();
        self.left(&mut q, jobs.iter());
        jobs
    }

    /// Everything queued, fresh and returned (at shutdown, from a lane that
    /// cannot send).
    pub(super) fn drain_all(&self) -> Vec<Job> {
        let mut q = self.lock();
        let mut all: Vec<Job> = q.fresh.drain(..).map(|f| f.job).collect();
        self.fresh_changed(&q);
        all.extend(q.returned.drain(..));
        self.left(&mut q, all.iter());
        all
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long the oldest fresh delivery has waited, and how far it is
    /// behind the lanes' front (never more than its wait), both in reading
    /// time (see [`Front`]).
    pub(super) fn oldest_fresh_and_lag(&self) -> Option<(Duration, Duration)> {
        let front = &self.shares.front;
        self.lock()
            .fresh
            .front()
            .map(|f| (front.waited(f.stamp), front.lag(f.stamp)))
    }

    /// Give back the memory of empty queues (an idle lane holds none).
    pub(super) fn release_buffers(&self) {
        let mut q = self.lock();
        if q.fresh.is_empty() {
            q.fresh = VecDeque::new();
        }
        if q.returned.is_empty() {
            q.returned = VecDeque::new();
        }
    }

    /// The fresh queue's head moved: the front sees its new oldest stamp.
    fn fresh_changed(&self, q: &Queues) {
        self.progress.set_oldest(q.fresh.front().map(|f| f.stamp));
    }

    /// Whether any fresh delivery is queued (one the source could spill).
    pub fn has_fresh(&self) -> bool {
        !self.lock().fresh.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use transports::model::SourceRef;
    use transports::Event;

    use super::*;
    use crate::offsets::{Budget, HoldIndex, OffsetTracker, Ticket};

    /// A fresh delivery whose weight is 1,000 bytes (payload and overhead).
    fn job(p: &Arc<crate::offsets::PartitionOffsets>, offset: i64) -> Job {
        let head = r#"{"event":"message.sent","id":"e","data":{"pad":""}}"#;
        let pad = "x".repeat(1_000 - crate::offsets::DELIVERY_OVERHEAD - head.len());
        let raw = head.replace(r#""pad":"""#, &format!(r#""pad":"{pad}""#));
        let src = SourceRef {
            topic: "events".into(),
            partition: 0,
            offset,
        };
        let event = Event::decode(Bytes::from(raw), src, Some(0), 1 << 20).unwrap();
        Job {
            ticket: Ticket::issue(p.clone(), offset, 1, event.payload().len()),
            event: Arc::new(event),
            parked: None,
        }
    }

    fn partition() -> (OffsetTracker, Arc<crate::offsets::PartitionOffsets>) {
        let (holds, _rx) = HoldIndex::new();
        let t = OffsetTracker::new(Arc::new(Budget::new(1_000_000, 1 << 30)), holds);
        t.assign([("events", 0)]);
        let p = t.partition("events", 0).unwrap();
        (t, p)
    }

    /// Offers deliveries to `lanes` in turn until one is refused; how many
    /// were taken.
    fn fill(lanes: &[Inbox], p: &Arc<crate::offsets::PartitionOffsets>, from: i64) -> usize {
        (from..)
            .enumerate()
            .find(|&(taken, offset)| lanes[taken % lanes.len()].offer(job(p, offset)).is_err())
            .map(|(taken, _)| taken)
            .expect("an offer is refused at last")
    }

    #[test]
    fn a_flooding_tenant_stops_at_its_share_and_leaves_room_for_the_others() {
        let (_t, p) = partition();
        // A budget of 10 deliveries' weight.
        let shares = Arc::new(Shares::new(
            10_000,
            Arc::new(Front::new(Duration::from_secs(2))),
        ));
        let evictions = Arc::new(Evictions::default());
        let inbox = |lane: usize, tenant: &str| {
            Inbox::new(
                1_000,
                16,
                lane,
                evictions.clone(),
                shares.clone(),
                shares.tenant(Some(tenant)),
            )
        };
        let flood: Vec<Inbox> = (0..4).map(|i| inbox(i, "flood")).collect();
        let quiet = inbox(4, "quiet");
        assert_eq!(weight(&job(&p, 0)), 1_000);

        // Alone in the queues, the flooding tenant still stops at about
        // half the budget (each delivery counts 1,256: its own 1,000 and its
        // record's 256): each empty lane takes one, then a lane holding its
        // even part of the tenant's 5,024 is refused, though it is within
        // its own share (1.5 x 10,000 / 4 = 3,750 > 2 x 1,000).
        assert_eq!(fill(&flood, &p, 1), 4);
        // The quiet tenant's deliveries are taken.
        assert!(quiet.offer(job(&p, 100)).is_ok());
        assert!(quiet.offer(job(&p, 101)).is_ok());
        assert!(
            flood[2].offer(job(&p, 102)).is_err(),
            "still over its share"
        );
        // A lane of the flooding tenant that keeps up (holds nothing) still
        // takes its deliveries: only the ones that hold the flood spill.
        let keeps_up = inbox(6, "flood");
        assert!(keeps_up.offer(job(&p, 103)).is_ok());

        // The flood drains: its share is free again.
        for lane in &flood {
            lane.drain_all();
        }
        assert!(
            flood[1].offer(job(&p, 104)).is_ok(),
            "a lane that never spilled takes again"
        );
    }

    #[test]
    fn one_tenant_beside_endpoints_without_one_has_no_cap() {
        let (_t, p) = partition();
        let shares = Arc::new(Shares::new(
            10_000,
            Arc::new(Front::new(Duration::from_secs(2))),
        ));
        let evictions = Arc::new(Evictions::default());
        let lane = |i: usize, tenant: Option<&str>| {
            Inbox::new(
                1_000,
                16,
                i,
                evictions.clone(),
                shares.clone(),
                shares.tenant(tenant),
            )
        };
        let acme: Vec<Inbox> = (0..4).map(|i| lane(i, Some("acme"))).collect();
        let _platform = lane(4, None);
        // Only the lanes' shares: three each, as without tenants.
        assert_eq!(fill(&acme, &p, 1), 12);
        // A second tenant's first lane makes the cap apply; when it goes,
        // the cap goes with it.
        let other = lane(5, Some("globex"));
        assert_eq!(shares.known_tenants.load(Ordering::Relaxed), 2);
        drop(other);
        assert_eq!(shares.known_tenants.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn without_tenants_only_the_lanes_shares_apply() {
        let (_t, p) = partition();
        let shares = Arc::new(Shares::new(
            10_000,
            Arc::new(Front::new(Duration::from_secs(2))),
        ));
        let evictions = Arc::new(Evictions::default());
        let lanes: Vec<Inbox> = (0..4)
            .map(|i| {
                Inbox::new(
                    1_000,
                    16,
                    i,
                    evictions.clone(),
                    shares.clone(),
                    shares.tenant(None),
                )
            })
            .collect();
        // Each lane up to 1.5 x 10,000 / 4 = 3,750: three deliveries each,
        // as before tenants had shares.
        assert_eq!(fill(&lanes, &p, 1), 12);
    }

    #[test]
    fn moving_a_lane_to_another_tenant_moves_what_it_holds() {
        let (_t, p) = partition();
        let shares = Arc::new(Shares::new(
            10_000,
            Arc::new(Front::new(Duration::from_secs(2))),
        ));
        let a = shares.tenant(Some("a"));
        let b = shares.tenant(Some("b"));
        let inbox = Inbox::new(
            100,
            16,
            0,
            Arc::new(Evictions::default()),
            shares.clone(),
            a.clone(),
        );
        inbox.offer(job(&p, 1)).ok().unwrap();
        inbox.offer(job(&p, 2)).ok().unwrap();
        assert_eq!(a.bytes.load(Ordering::Relaxed), 2 * 1_256);
        inbox.set_tenant(b.clone());
        assert_eq!(a.bytes.load(Ordering::Relaxed), 0);
        assert_eq!(b.bytes.load(Ordering::Relaxed), 2 * 1_256);
        assert_eq!(shares.active_tenants.load(Ordering::Relaxed), 1);
        inbox.drain_all();
        assert_eq!(b.bytes.load(Ordering::Relaxed), 0);
        assert_eq!(shares.active_tenants.load(Ordering::Relaxed), 0);
        assert_eq!(shares.active.load(Ordering::Relaxed), 0);
    }
}
