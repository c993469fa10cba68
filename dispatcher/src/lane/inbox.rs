//! A lane's inbox: the bounded queue between the readers (the source with
//! fresh deliveries, the internal-topic readers with returned ones) and the
//! lane's task. Nobody ever waits on it: a full inbox refuses, and the
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::front::Front;
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
pub struct Shares {
    budget: usize,
    /// Lanes with anything queued.
    active: AtomicUsize,
    pub front: Arc<Front>,
}

impl Shares {
    pub fn new(budget: usize, front: Arc<Front>) -> Shares {
        Shares {
            budget,
            active: AtomicUsize::new(0),
            front,
        }
    }

    fn share(&self) -> usize {
        let active = self.active.load(Ordering::Acquire).max(1);
        self.budget / active * 3 / 2
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

#[derive(Default)]
struct Queues {
    fresh: VecDeque<Queued>,
    returned: VecDeque<Job>,
    /// What the queued deliveries weigh (see [`weight`]).
    bytes: usize,
}

/// What a queued delivery counts against its lane's share: its event (as if
/// the lane alone held it) and its bookkeeping.
fn weight(job: &Job) -> usize {
    job.event.payload().len() + crate::offsets::DELIVERY_OVERHEAD
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
}

impl Inbox {
    pub fn new(
        cap: usize,
        returned_cap: usize,
        lane: usize,
        evictions: Arc<Evictions>,
        shares: Arc<Shares>,
    ) -> Inbox {
        Inbox {
            lane,
            evictions,
            shares,
            q: Mutex::default(),
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

    /// Queue a fresh delivery, or give it back to be spilled: when the
    /// lane spills already, cannot send, or is full (`queue_capacity`, or
    /// its share of the memory budget). A full lane starts spilling, and
    /// asks for what it queued to be spilled first, so its backlog keeps
    /// the source's order.
    pub fn offer(&self, job: Job) -> Result<(), Job> {
        if self.spilling.load(Ordering::Acquire) || !self.accepting.load(Ordering::Acquire) {
            return Err(job);
        }
        let w = weight(&job);
        let mut q = self.lock();
        let len = q.fresh.len() + q.returned.len();
        if len >= self.cap() || (len > 0 && q.bytes + w > self.shares.share()) {
            drop(q);
            self.request_eviction();
            return Err(job);
        }
        self.push(&mut q, w);
        q.fresh.push_back(Queued {
            job,
            stamp: self.shares.front.now(),
        });
        drop(q);
        self.work.notify_one();
        Ok(())
    }

    fn push(&self, q: &mut Queues, w: usize) {
        if q.fresh.is_empty() && q.returned.is_empty() {
            self.shares.active.fetch_add(1, Ordering::AcqRel);
        }
        q.bytes += w;
    }

    /// Account for `jobs` leaving the queues.
    fn left<'j>(&self, q: &mut Queues, jobs: impl Iterator<Item = &'j Job>) {
        let mut removed = 0;
        for job in jobs {
            q.bytes = q.bytes.saturating_sub(weight(job));
            removed += 1;
        }
        if removed > 0 && q.fresh.is_empty() && q.returned.is_empty() {
            q.bytes = 0;
            self.shares.active.fetch_sub(1, Ordering::AcqRel);
        }
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
        if q.returned.len() >= self.returned_cap() || q.fresh.len() + q.returned.len() >= self.cap()
        {
            return Err(Refused::NoRoom(job));
        }
        self.push(&mut q, weight(&job));
        q.returned.push_back(job);
        drop(q);
        self.work.notify_one();
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
        self.left(&mut q, jobs.iter());
        Some(jobs)
    }

    pub fn evict_requested(&self) -> bool {
        self.evict.load(Ordering::Acquire)
    }

    /// No more fresh or returned deliveries: the lane finishes what it has.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
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
                self.shares.front.started(f.stamp);
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
        all.extend(q.returned.drain(..));
        self.left(&mut q, all.iter());
        all
    }

    pub fn len(&self) -> usize {
        let q = self.lock();
        q.fresh.len() + q.returned.len()
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

    /// Whether any fresh delivery is queued (one the source could spill).
    pub fn has_fresh(&self) -> bool {
        !self.lock().fresh.is_empty()
    }
}
