//! The commit watermark: the delivery contract in one place.
//!
//! An offset may be committed only when every record before it is *final*:
//! each of its deliveries delivered or durably dead-lettered. Deliveries
//! finish out of order (endpoints differ in speed), so each assigned partition
//! keeps the offsets it has read in order with a done flag; the committable
//! position is the first offset not yet done (or one past the last read).
//!
//! A [`Ticket`] is one record's claim on that position. It is shared by the
//! record's deliveries and completes the offset when the last one finishes.
//! A ticket that is dropped without finishing (shutdown, an abandoned
//! partition) never completes its offset, so the record is read again by the
//! next owner: at least once, never lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Records read and not yet final, across all partitions: the source's
/// back-pressure signal, and what bounds the memory held by events. It wakes
/// the source when it falls to `low_water`. (A final record stuck behind an
/// unfinished one costs only its 16-byte place in the partition's window.)
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    low_water: usize,
    drained: Notify,
}

impl InFlight {
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves after the count fell to the low-water mark (a wake-up that
    /// came while nobody waited is kept for the next waiter).
    pub async fn drained(&self) {
        self.drained.notified().await
    }

    fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.count.fetch_sub(n, Ordering::AcqRel);
        if before > self.low_water && before - n <= self.low_water {
            self.drained.notify_one();
        }
    }
}

/// Offsets of one assigned partition.
#[derive(Debug)]
pub struct PartitionOffsets {
    pub topic: Arc<str>,
    pub partition: i32,
    state: Mutex<State>,
    in_flight: Arc<InFlight>,
}

#[derive(Debug, Default)]
struct State {
    /// Read and not yet known final, in offset order; `true` once done.
    pending: VecDeque<(i64, bool)>,
    /// One past the highest offset read, once anything was read.
    next: Option<i64>,
    /// The last position handed out for commit.
    committed: Option<i64>,
}

impl PartitionOffsets {
    fn new(topic: Arc<str>, partition: i32, in_flight: Arc<InFlight>) -> PartitionOffsets {
        PartitionOffsets {
            topic,
            partition,
            state: Mutex::new(State::default()),
            in_flight,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock cannot leave the state
        // half-updated in a way that matters more than stopping would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record that `offset` was read. Offsets arrive in increasing order.
    fn read(&self, offset: i64) {
        let mut s = self.lock();
        s.pending.push_back((offset, false));
        s.next = Some(offset + 1);
        self.in_flight.add(1);
    }

    /// Mark `offset` final.
    fn complete(&self, offset: i64) {
        let mut s = self.lock();
        if let Ok(i) = s.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            if !s.pending[i].1 {
                s.pending[i].1 = true;
                self.in_flight.sub(1);
            }
        }
        while s.pending.front().is_some_and(|&(_, done)| done) {
            s.pending.pop_front();
        }
    }

    /// The position to commit: everything before it is final.
    pub fn watermark(&self) -> Option<i64> {
        let s = self.lock();
        s.pending.front().map(|&(o, _)| o).or(s.next)
    }

    /// Records read but not yet final.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// The watermark, if it moved since the last call.
    fn take_commit(&self) -> Option<i64> {
        let mut s = self.lock();
        let w = s.pending.front().map(|&(o, _)| o).or(s.next)?;
        if s.committed.is_some_and(|c| c >= w) {
            return None;
        }
        s.committed = Some(w);
        Some(w)
    }
}

/// One record's claim on its partition's watermark.
#[derive(Debug)]
pub struct Ticket {
    partition: Arc<PartitionOffsets>,
    offset: i64,
    remaining: AtomicUsize,
}

impl Ticket {
    /// Start tracking `offset`, which has `deliveries` deliveries still to
    /// finish. With none it is final at once.
    pub fn issue(partition: Arc<PartitionOffsets>, offset: i64, deliveries: usize) -> Arc<Ticket> {
        partition.read(offset);
        if deliveries == 0 {
            partition.complete(offset);
        }
        Arc::new(Ticket {
            partition,
            offset,
            remaining: AtomicUsize::new(deliveries),
        })
    }

    /// One delivery of this record is final.
    pub fn finish_one(&self) {
        // AcqRel: the last finisher must see every other finisher's work
        // before it moves the watermark.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.partition.complete(self.offset);
        }
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn partition(&self) -> &Arc<PartitionOffsets> {
        &self.partition
    }
}

/// Assigned partitions by topic, then partition number.
type Assigned = HashMap<Arc<str>, HashMap<i32, Arc<PartitionOffsets>>>;

/// Every partition this consumer owns right now.
#[derive(Debug)]
pub struct OffsetTracker {
    topics: Mutex<Assigned>,
    in_flight: Arc<InFlight>,
}

impl OffsetTracker {
    /// `low_water`: the in-flight count at which a paused source resumes.
    pub fn new(low_water: usize) -> OffsetTracker {
        OffsetTracker {
            topics: Mutex::default(),
            in_flight: Arc::new(InFlight {
                count: AtomicUsize::new(0),
                low_water,
                drained: Notify::new(),
            }),
        }
    }

    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    fn lock(&self) -> MutexGuard<'_, Assigned> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Partitions were assigned: start each afresh (a partition that comes
    /// back after a revoke starts from the committed offset, not our memory).
    pub fn assign<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut topics = self.lock();
        for (topic, partition) in partitions {
            let topic: Arc<str> = match topics.get_key_value(topic) {
                Some((k, _)) => k.clone(),
                None => topic.into(),
            };
            topics.entry(topic.clone()).or_default().insert(
                partition,
                Arc::new(PartitionOffsets::new(
                    topic,
                    partition,
                    self.in_flight.clone(),
                )),
            );
        }
    }

    /// Partitions were revoked: forget them and return their final
    /// positions, to be committed before the new owner starts reading.
    pub fn revoke<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<(Arc<str>, i32, i64)> {
        let mut topics = self.lock();
        let mut out = Vec::new();
        for (topic, partition) in partitions {
            if let Some(parts) = topics.get_mut(topic) {
                if let Some(p) = parts.remove(&partition) {
                    if let Some(w) = p.take_commit() {
                        out.push((p.topic.clone(), partition, w));
                    }
                    // Its unfinished records stay counted in flight: their
                    // deliveries still run and hold lane places, and their
                    // tickets still count down (through `complete`) when
                    // they finish, revoked or not.
                }
                if parts.is_empty() {
                    topics.remove(topic);
                }
            }
        }
        out
    }

    /// The state of an assigned partition; `None` if it is not ours.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<PartitionOffsets>> {
        self.lock().get(topic)?.get(&partition).cloned()
    }

    /// Positions that moved since they were last taken, for a commit.
    pub fn take_commits(&self) -> Vec<(Arc<str>, i32, i64)> {
        let topics = self.lock();
        let mut out = Vec::new();
        for parts in topics.values() {
            for p in parts.values() {
                if let Some(w) = p.take_commit() {
                    out.push((p.topic.clone(), p.partition, w));
                }
            }
        }
        out
    }

    /// Every partition's current watermark (for metrics and shutdown).
    pub fn watermarks(&self) -> Vec<(Arc<str>, i32, Option<i64>, usize)> {
        let topics = self.lock();
        topics
            .values()
            .flat_map(|parts| parts.values())
            .map(|p| (p.topic.clone(), p.partition, p.watermark(), p.pending()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (OffsetTracker, Arc<PartitionOffsets>) {
        let t = OffsetTracker::new(1);
        t.assign([("events", 0)]);
        let p = t.partition("events", 0).unwrap();
        (t, p)
    }

    #[test]
    fn nothing_read_nothing_to_commit() {
        let (t, p) = tracker();
        assert_eq!(p.watermark(), None);
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn watermark_waits_for_the_slowest_record() {
        let (t, p) = tracker();
        let a = Ticket::issue(p.clone(), 10, 2);
        let b = Ticket::issue(p.clone(), 11, 1);
        let c = Ticket::issue(p.clone(), 12, 1);
        assert_eq!(p.watermark(), Some(10));

        // Later records finishing first do not move the watermark past 10.
        c.finish_one();
        b.finish_one();
        a.finish_one();
        assert_eq!(
            p.watermark(),
            Some(10),
            "offset 10 still has one delivery out"
        );
        assert_eq!(t.take_commits(), vec![("events".into(), 0, 10)]);

        a.finish_one();
        assert_eq!(p.watermark(), Some(13));
        assert_eq!(t.take_commits(), vec![("events".into(), 0, 13)]);
        assert!(
            t.take_commits().is_empty(),
            "unchanged positions are not committed again"
        );
    }

    #[test]
    fn unrouted_records_are_final_at_once_and_gaps_are_fine() {
        let (_, p) = tracker();
        let _a = Ticket::issue(p.clone(), 5, 0);
        // Offsets may have gaps (compaction, transaction markers).
        let b = Ticket::issue(p.clone(), 9, 1);
        let _c = Ticket::issue(p.clone(), 20, 0);
        assert_eq!(p.watermark(), Some(9));
        b.finish_one();
        assert_eq!(p.watermark(), Some(21));
    }

    #[test]
    fn dropped_tickets_never_complete() {
        let (_, p) = tracker();
        let a = Ticket::issue(p.clone(), 0, 1);
        let b = Ticket::issue(p.clone(), 1, 1);
        drop(a); // abandoned, e.g. at shutdown
        b.finish_one();
        assert_eq!(
            p.watermark(),
            Some(0),
            "an abandoned record must be read again"
        );
    }

    #[test]
    fn revoke_returns_final_positions_and_forgets() {
        let (t, p) = tracker();
        t.assign([("events", 1)]);
        let a = Ticket::issue(p.clone(), 0, 1);
        let _b = Ticket::issue(p.clone(), 1, 1);
        a.finish_one();
        let revoked = t.revoke([("events", 0)]);
        assert_eq!(revoked, vec![("events".into(), 0, 1)]);
        assert!(t.partition("events", 0).is_none());
        assert!(t.partition("events", 1).is_some());
        // Late completions on a revoked partition are harmless.
        _b.finish_one();
        assert!(t.take_commits().is_empty());
        // Re-assignment starts from a clean slate.
        t.assign([("events", 0)]);
        assert_eq!(t.partition("events", 0).unwrap().watermark(), None);
    }

    #[test]
    fn concurrent_finishers_complete_exactly_once() {
        let (_, p) = tracker();
        let tickets: Vec<_> = (0..200).map(|o| Ticket::issue(p.clone(), o, 4)).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let tickets = &tickets;
                s.spawn(move || tickets.iter().rev().for_each(|t| t.finish_one()));
            }
        });
        assert_eq!(p.watermark(), Some(200));
        assert_eq!(p.pending(), 0);
    }

    #[tokio::test]
    async fn in_flight_counts_unfinished_records_and_wakes_at_low_water() {
        let (t, p) = tracker();
        let tickets: Vec<_> = (0..3).map(|o| Ticket::issue(p.clone(), o, 1)).collect();
        assert_eq!(t.in_flight().get(), 3);
        tickets[2].finish_one();
        assert_eq!(
            t.in_flight().get(),
            2,
            "offset 2 is final (though not committable yet)"
        );
        tickets[2].partition().complete(2);
        assert_eq!(t.in_flight().get(), 2, "completing twice counts once");
        tickets[0].finish_one();
        assert_eq!(t.in_flight().get(), 1);
        assert_eq!(p.watermark(), Some(1));
        // Crossing the low-water mark (1) left a wake-up for the next waiter.
        tokio::time::timeout(std::time::Duration::from_secs(5), t.in_flight().drained())
            .await
            .expect("woken at low water");
        t.revoke([("events", 0)]);
        assert_eq!(
            t.in_flight().get(),
            1,
            "a revoked partition's deliveries still run"
        );
        tickets[1].finish_one();
        assert_eq!(
            t.in_flight().get(),
            0,
            "and release their place when they finish"
        );
    }
}
