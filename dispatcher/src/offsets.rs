//! The commit watermark and the memory budget: the delivery contract in one
//! place.
//!
//! An offset may be committed only when every record before it is *final*:
//! each of its deliveries delivered, dead-lettered, or durably written to a
//! retry or spill topic. Deliveries finish out of order (endpoints differ in
//! speed), so each assigned partition keeps the offsets it has read in order
//! with a mark; the committable position is the first offset not yet done.
//!
//! A [`Ticket`] is one record's claim on that position and on the memory
//! [`Budget`]. It is shared by the record's deliveries and completes the
//! offset when the last one finishes. A ticket dropped before that gives its
//! memory back at once, but never completes its offset: a record read from a
//! source topic is then read again by the next owner of its partition.
//!
//! Records of the internal topics (retry tiers and the spill topic) carry one
//! delivery for one endpoint, and may wait there as long as their endpoint
//! has no room. For those, an endpoint has a *hold* on the partition: a
//! cursor at the first of its records not yet handed to its lane. The main
//! reader moves past such records; the endpoint's backlog reader (see
//! [`crate::backlog`]) comes back for them when its lane has room. A hold is
//! part of the watermark, so nothing it covers is committed before it is
//! final. Dropping such a record's ticket puts the record back under its
//! endpoint's hold instead of abandoning it: that is how a lane gives back
//! work it cannot do now without writing anything again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use transports::SourceRef;

/// Bytes charged for a record besides its payload: the decoded event, its
/// ticket and its place in the partition's window.
pub const RECORD_OVERHEAD: usize = 256;
/// Bytes charged for each delivery of a record while it is in memory.
pub const DELIVERY_OVERHEAD: usize = 160;

/// How long a spilled copy of an ordered endpoint may wait for its source
/// partition's new assignment to read its first record, to tell whether
/// that copy is read again (see [`OffsetTracker::returned`]). A partition
/// with nothing left to read never does: its copies go after this.
pub const UNDECIDED_MAX: Duration = Duration::from_secs(10);

/// Gaps in a partition's offsets remembered per assignment (see
/// [`PartitionOffsets::has_read`]): a compacted topic has many, and past
/// this many none counts as read.
const MAX_GAPS: usize = 64;

/// What becomes of a spilled delivery that came back; see
/// [`OffsetTracker::returned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Deliver,
    /// Its source record is read again in this assignment: final as it is.
    Superseded,
    /// Not known yet: back under its endpoint's hold for now.
    NotYet,
}

/// Memory held by records and deliveries that are not final yet, across all
/// partitions: the source's only back-pressure. It counts records (against
/// `pipeline.max_events_in_flight`) and bytes (against
/// `pipeline.memory_budget`); the source holds back when either is reached
/// and goes on at three quarters of both.
#[derive(Debug)]
pub struct Budget {
    records: AtomicUsize,
    bytes: AtomicUsize,
    max_records: usize,
    max_bytes: usize,
    drained: Notify,
}

impl Budget {
    pub fn new(max_records: usize, max_bytes: usize) -> Budget {
        Budget {
            records: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            drained: Notify::new(),
        }
    }

    /// Records read and not yet final.
    pub fn records(&self) -> usize {
        self.records.load(Ordering::Acquire)
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// At or over either limit: the source must stop reading.
    pub fn full(&self) -> bool {
        self.records() >= self.max_records || self.bytes() >= self.max_bytes
    }

    /// At or under three quarters of both limits: a paused source may go on.
    pub fn low(&self) -> bool {
        self.records() <= self.max_records * 3 / 4 && self.bytes() <= self.max_bytes * 3 / 4
    }

    pub fn charge(&self, records: usize, bytes: usize) {
        self.records.fetch_add(records, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub fn release(&self, records: usize, bytes: usize) {
        let was_low = self.low();
        if records > 0 {
            self.records.fetch_sub(records, Ordering::AcqRel);
        }
        if bytes > 0 {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        if !was_low && self.low() {
            self.drained.notify_one();
        }
    }

    /// Resolves after usage fell to the low-water mark (a wake-up that came
    /// while nobody waited is kept for the next waiter).
    pub async fn drained(&self) {
        self.drained.notified().await
    }
}

/// Where an offset stands in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Open,
    Done,
    /// Its ticket was dropped unfinished: it must be read again, so it
    /// holds the watermark for good (until the partition is revoked).
    Abandoned,
}

/// Offsets in flight, in order, each with its mark.
#[derive(Debug, Default)]
struct Window {
    entries: VecDeque<(i64, Mark)>,
}

impl Window {
    fn find(&self, offset: i64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&offset, |&(o, _)| o)
    }

    fn push(&mut self, offset: i64) {
        match self.entries.back() {
            Some(&(last, _)) if last >= offset => {
                // Only a hold's reader re-reading after a give-back lands here.
                if let Err(i) = self.find(offset) {
                    self.entries.insert(i, (offset, Mark::Open));
                }
            }
            _ => self.entries.push_back((offset, Mark::Open)),
        }
    }

    fn mark(&self, offset: i64) -> Option<Mark> {
        self.find(offset).ok().map(|i| self.entries[i].1)
    }

    /// Set `offset`'s mark; returns the mark it had.
    fn set(&mut self, offset: i64, mark: Mark) -> Option<Mark> {
        let i = self.find(offset).ok()?;
        Some(std::mem::replace(&mut self.entries[i].1, mark))
    }

    fn remove(&mut self, offset: i64) -> Option<Mark> {
        let i = self.find(offset).ok()?;
        self.entries.remove(i).map(|(_, m)| m)
    }

    fn trim(&mut self) {
        while self.entries.front().is_some_and(|&(_, m)| m == Mark::Done) {
            self.entries.pop_front();
        }
    }

    fn floor(&self) -> Option<i64> {
        self.entries.front().map(|&(o, _)| o)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// One endpoint's cursor over an internal-topic partition.
#[derive(Debug)]
struct Hold {
    lane: usize,
    /// The first offset its reader has not looked at yet.
    next_unread: i64,
    /// Records its reader handed to the lane, not final yet.
    window: Window,
    /// False once its reader caught up with the main reader; kept until its
    /// window empties.
    open: bool,
    /// This endpoint's records the main reader moved past (or that came
    /// back) and its reader has not handed over yet.
    waiting: u64,
    /// Timestamp (ms) of the oldest of those, as far as known.
    oldest_ms: Option<i64>,
    /// The cursor moved back (a record was given back) since the reader
    /// last asked for it: the reader must read from there again before it
    /// takes anything later, or it would pass the given-back record.
    rewound: bool,
}

impl Hold {
    fn floor(&self) -> Option<i64> {
        let w = self.window.floor();
        if self.open {
            Some(w.map_or(self.next_unread, |w| w.min(self.next_unread)))
        } else {
            w
        }
    }
}

/// Offsets of one assigned partition.
#[derive(Debug)]
pub struct PartitionOffsets {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Names this assignment of the partition, across processes (random):
    /// a spilled delivery carries its source partition's, so that a later
    /// assignment can tell a copy it will read again from one of its own.
    epoch: u64,
    /// When it was assigned.
    assigned_at: Instant,
    state: Mutex<State>,
    budget: Arc<Budget>,
    holds: Arc<HoldIndex>,
}

#[derive(Debug, Default)]
struct State {
    /// Read by the main reader and not yet known final.
    main: Window,
    /// One past the highest offset the main reader read.
    next: Option<i64>,
    /// The first offset the main reader read in this assignment: it reads
    /// everything from there on, in order, but for `gaps`.
    first: Option<i64>,
    /// Offsets the main reader found missing (compacted or deleted
    /// records, transaction markers), as half-open ranges; at most
    /// [`MAX_GAPS`], then `gaps_lost` says they are no longer known.
    gaps: Vec<(i64, i64)>,
    gaps_lost: bool,
    /// The first offset the main reader holds without deciding (a parked
    /// record not yet due), if any.
    held_from: Option<i64>,
    /// The last position the broker confirmed as committed.
    committed: Option<i64>,
    holds: Vec<Hold>,
}

impl State {
    fn watermark(&self) -> Option<i64> {
        let main = self.main.floor().or(self.next);
        self.holds
            .iter()
            .filter_map(Hold::floor)
            .fold(main, |w, h| Some(w.map_or(h, |w| w.min(h))))
    }

    fn decided(&self) -> Option<i64> {
        self.held_from.or(self.next)
    }

    fn hold(&mut self, lane: usize) -> Option<&mut Hold> {
        self.holds.iter_mut().find(|h| h.lane == lane)
    }

    fn drop_finished_holds(&mut self) {
        self.holds.retain(|h| h.open || h.window.len() > 0);
    }
}

/// What a hold's reader should do with the record at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderStep {
    /// Hand it to the lane: it is the endpoint's and nobody has it.
    Take,
    /// Not the endpoint's, or already handed over: read on.
    Skip,
    /// The reader caught up with the main reader (or the hold is gone):
    /// stop reading this partition.
    Stop,
    /// The cursor moved back: read again from [`PartitionOffsets::reader_position`].
    Rewind,
}

impl PartitionOffsets {
    fn new(
        topic: Arc<str>,
        partition: i32,
        budget: Arc<Budget>,
        holds: Arc<HoldIndex>,
    ) -> PartitionOffsets {
        PartitionOffsets {
            topic,
            partition,
            epoch: rand::random(),
            assigned_at: Instant::now(),
            state: Mutex::new(State::default()),
            budget,
            holds,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent before it can
        // panic, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See the field.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether this assignment's main reader read the record at `offset`:
    /// `None` while it has not got that far (or read nothing yet).
    pub fn has_read(&self, offset: i64) -> Option<bool> {
        let s = self.lock();
        let (first, next) = (s.first?, s.next?);
        if offset < first {
            return Some(false);
        }
        if offset >= next {
            return None;
        }
        let skipped = s.gaps_lost || s.gaps.iter().any(|&(a, b)| a <= offset && offset < b);
        Some(!skipped)
    }

    /// Whether the main reader read anything in this assignment.
    fn started(&self) -> bool {
        self.lock().first.is_some()
    }

    /// The position to commit: everything before it is final.
    pub fn watermark(&self) -> Option<i64> {
        self.lock().watermark()
    }

    /// Entries in this partition's windows: read and not yet committable.
    pub fn pending(&self) -> usize {
        let s = self.lock();
        s.main.len() + s.holds.iter().map(|h| h.window.len()).sum::<usize>()
    }

    /// The main reader decided on everything it held undecided.
    pub fn release_undecided(&self) {
        self.lock().held_from = None;
    }

    /// The main reader read `offset`, a due internal-topic record of
    /// `lane`. If the endpoint has an open hold here, the record is left to
    /// its reader (counted as waiting) and this returns `None`; otherwise
    /// the record is handed over with the returned ticket. One step under
    /// one lock, so a reader catching up cannot slip between the two.
    pub fn read_internal(
        self: &Arc<Self>,
        offset: i64,
        lane: usize,
        payload: usize,
        timestamp_ms: i64,
    ) -> Option<Arc<Ticket>> {
        {
            let mut s = self.lock();
            if let Some(h) = s.hold(lane).filter(|h| h.open) {
                h.waiting += 1;
                h.oldest_ms = Some(h.oldest_ms.map_or(timestamp_ms, |o| o.min(timestamp_ms)));
                s.main.push(offset);
                s.main.set(offset, Mark::Done);
                s.main.trim();
                s.next = Some(offset + 1);
                return None;
            }
        }
        Some(Ticket::issue_internal(
            self.clone(),
            offset,
            lane,
            payload,
            timestamp_ms,
            false,
        ))
    }

    /// The next step of `lane`'s reader at `offset`. `is_its_own` says
    /// whether the record is the endpoint's.
    pub fn reader_step(&self, lane: usize, offset: i64, is_its_own: bool) -> ReaderStep {
        let mut s = self.lock();
        let decided = s.decided();
        let in_main = s.main.mark(offset) == Some(Mark::Open);
        let Some(h) = s.hold(lane) else {
            return ReaderStep::Stop;
        };
        if !h.open {
            return ReaderStep::Stop;
        }
        if h.rewound {
            return ReaderStep::Rewind;
        }
        if offset < h.next_unread {
            return ReaderStep::Skip;
        }
        if decided.is_none_or(|d| offset >= d) {
            // Caught up: from here the main reader hands its records over.
            self.close_hold(s, lane);
            return ReaderStep::Stop;
        }
        h.next_unread = offset + 1;
        if !is_its_own || in_main || h.window.mark(offset).is_some() {
            return ReaderStep::Skip;
        }
        h.window.push(offset);
        h.waiting = h.waiting.saturating_sub(1);
        ReaderStep::Take
    }

    /// The main reader is at `offset` of this internal-topic partition:
    /// records between the last one it read and this one were deleted
    /// (retention) before it read them. Internal topics are written without
    /// transactions and never compacted, so their offsets have no other
    /// gaps.
    pub fn check_gap(&self, offset: i64) {
        let next = self.lock().next;
        if let Some(next) = next.filter(|&n| offset > n) {
            self.holds.lost(Lost {
                lane: None,
                topic: self.topic.clone(),
                partition: self.partition,
                deliveries: (offset - next) as u64,
            });
        }
    }

    /// `lane`'s reader found nothing more to read here. If it has looked at
    /// every record the main reader decided on, it is caught up: the hold
    /// closes, as when it reads past that point (a quiet partition may give
    /// it no record to read past). Returns whether it closed.
    pub fn reader_idle(&self, lane: usize) -> bool {
        let mut s = self.lock();
        let decided = s.decided();
        let Some(h) = s.hold(lane).filter(|h| h.open && !h.rewound) else {
            return false;
        };
        if decided.is_some_and(|d| h.next_unread < d) {
            return false;
        }
        self.close_hold(s, lane);
        true
    }

    /// `lane`'s reader caught up: its hold closes (kept until its window
    /// empties), and what it still counted as waiting never came back.
    fn close_hold(&self, mut s: MutexGuard<'_, State>, lane: usize) {
        let Some(h) = s.hold(lane) else {
            return;
        };
        let lost = std::mem::take(&mut h.waiting);
        h.open = false;
        h.oldest_ms = None;
        s.drop_finished_holds();
        drop(s);
        self.report_lost(lane, lost);
    }

    /// A hold closed with records of its endpoint its reader never saw:
    /// they were counted as waiting when the main reader passed them, so
    /// they were deleted from the topic before they came back (its
    /// retention is shorter than the backlog was old).
    fn report_lost(&self, lane: usize, lost: u64) {
        if lost > 0 {
            self.holds.lost(Lost {
                lane: Some(lane),
                topic: self.topic.clone(),
                partition: self.partition,
                deliveries: lost,
            });
        }
    }

    /// Where `lane`'s reader should read from, if it has an open hold here.
    /// The reader must then read from exactly there.
    pub fn reader_position(&self, lane: usize) -> Option<i64> {
        let mut s = self.lock();
        let h = s.hold(lane).filter(|h| h.open)?;
        h.rewound = false;
        Some(h.next_unread)
    }

    /// The oldest waiting record's time (ms) and how many wait, for `lane`.
    pub fn backlog(&self, lane: usize) -> Option<(u64, Option<i64>)> {
        let mut s = self.lock();
        s.hold(lane)
            .filter(|h| h.open)
            .map(|h| (h.waiting, h.oldest_ms))
    }

    /// Note the time of the record a reader handed over last: the oldest
    /// still waiting is no older.
    pub fn reader_progress(&self, lane: usize, timestamp_ms: i64) {
        let mut s = self.lock();
        if let Some(h) = s.hold(lane) {
            if h.waiting == 0 {
                h.oldest_ms = None;
            } else if h.oldest_ms.is_none_or(|o| o < timestamp_ms) {
                h.oldest_ms = Some(timestamp_ms);
            }
        }
    }

    /// Record that the main reader read `offset`. Offsets arrive in
    /// increasing order.
    fn read(&self, offset: i64, undecided: bool) {
        let mut s = self.lock();
        s.main.push(offset);
        if let Some(next) = s.next.filter(|&n| offset > n) {
            if s.gaps.len() < MAX_GAPS {
                s.gaps.push((next, offset));
            } else {
                s.gaps_lost = true;
            }
        }
        s.next = Some(offset + 1);
        s.first.get_or_insert(offset);
        if undecided && s.held_from.is_none() {
            s.held_from = Some(offset);
        }
    }

    /// The ticket for `offset` finished.
    fn complete(&self, offset: i64, lane: Option<usize>) {
        let mut s = self.lock();
        if let Some(h) = lane.and_then(|l| s.hold(l)) {
            if h.window.set(offset, Mark::Done).is_some() {
                h.window.trim();
                s.drop_finished_holds();
                return;
            }
        }
        if s.main.set(offset, Mark::Done).is_some() {
            s.main.trim();
        }
    }

    /// The ticket for `offset` was dropped unfinished.
    fn abandon(self: &Arc<Self>, offset: i64, lane: Option<usize>, timestamp_ms: i64) {
        let Some(lane) = lane else {
            // A source record: read again by the next owner.
            self.lock().main.set(offset, Mark::Abandoned);
            return;
        };
        // An internal-topic record: back under its endpoint's hold.
        let (opened, rewound) = {
            let mut s = self.lock();
            if s.main.set(offset, Mark::Done).is_some() {
                s.main.trim();
            }
            match s.hold(lane) {
                Some(h) => {
                    if h.window.remove(offset).is_some() {
                        h.window.trim();
                    }
                    let reopened = !h.open;
                    let mut rewound = false;
                    if reopened {
                        h.next_unread = offset;
                        h.open = true;
                    } else if offset < h.next_unread {
                        h.next_unread = offset;
                        h.rewound = true;
                        rewound = true;
                    }
                    h.waiting += 1;
                    h.oldest_ms = Some(h.oldest_ms.map_or(timestamp_ms, |o| o.min(timestamp_ms)));
                    (reopened, rewound)
                }
                None => {
                    s.holds.push(Hold {
                        lane,
                        next_unread: offset,
                        window: Window::default(),
                        open: true,
                        waiting: 1,
                        oldest_ms: Some(timestamp_ms),
                        rewound: false,
                    });
                    (true, false)
                }
            }
        };
        if opened {
            self.holds.opened(lane, self.clone());
        } else if rewound {
            // Its reader may have read past it (in this partition or, with
            // nothing more to read here, in none): it seeks back at once
            // rather than at its next look at the holds.
            self.holds.waker(lane).notify_one();
        }
    }

    /// The watermark, if it differs from what the broker confirmed.
    fn commit_candidate(&self) -> Option<i64> {
        let s = self.lock();
        let w = s.watermark()?;
        (s.committed != Some(w)).then_some(w)
    }

    fn confirm(&self, offset: i64) {
        let mut s = self.lock();
        if s.committed.is_none_or(|c| c < offset) {
            s.committed = Some(offset);
        }
    }

    /// Whether the main reader has decided on `offset` (handed it over or
    /// left it to a hold).
    pub fn passed(&self, offset: i64) -> bool {
        self.lock().decided().is_some_and(|d| d > offset)
    }

    /// Whether `lane` has an open hold here (for tests and the readers).
    pub fn has_open_hold(&self, lane: usize) -> bool {
        let mut s = self.lock();
        s.hold(lane).is_some_and(|h| h.open)
    }
}

/// One record's claim on its partition's watermark and on the budget.
#[derive(Debug)]
pub struct Ticket {
    partition: Arc<PartitionOffsets>,
    offset: i64,
    /// The endpoint whose hold takes the record back if it is dropped
    /// unfinished: set for internal-topic records.
    lane: Option<usize>,
    remaining: AtomicUsize,
    /// Bytes charged for the record itself (payload and overhead).
    bytes: usize,
    timestamp_ms: i64,
    /// When this replica read the record: where dispatch latency starts.
    read_at: Instant,
}

impl Ticket {
    /// Start tracking `offset` of a source record with `deliveries`
    /// deliveries still to finish and `payload` bytes. With none it is
    /// final at once.
    pub fn issue(
        partition: Arc<PartitionOffsets>,
        offset: i64,
        deliveries: usize,
        payload: usize,
    ) -> Arc<Ticket> {
        partition.read(offset, false);
        Ticket::charged(partition, offset, None, deliveries, payload, 0)
    }

    /// The main reader takes an internal-topic record of `lane`: to hand
    /// over, or, `undecided`, to hold until it is due (the main reader then
    /// has not decided on it, and no hold's reader may pass it).
    pub fn issue_internal(
        partition: Arc<PartitionOffsets>,
        offset: i64,
        lane: usize,
        payload: usize,
        timestamp_ms: i64,
        undecided: bool,
    ) -> Arc<Ticket> {
        partition.read(offset, undecided);
        Ticket::charged(partition, offset, Some(lane), 1, payload, timestamp_ms)
    }

    /// A hold's reader hands over a record after [`ReaderStep::Take`].
    pub fn issue_held(
        partition: Arc<PartitionOffsets>,
        offset: i64,
        lane: usize,
        payload: usize,
        timestamp_ms: i64,
    ) -> Arc<Ticket> {
        Ticket::charged(partition, offset, Some(lane), 1, payload, timestamp_ms)
    }

    fn charged(
        partition: Arc<PartitionOffsets>,
        offset: i64,
        lane: Option<usize>,
        deliveries: usize,
        payload: usize,
        timestamp_ms: i64,
    ) -> Arc<Ticket> {
        let bytes = payload + RECORD_OVERHEAD;
        if deliveries == 0 {
            partition.complete(offset, lane);
        } else {
            partition
                .budget
                .charge(1, bytes + deliveries * DELIVERY_OVERHEAD);
        }
        Arc::new(Ticket {
            partition,
            offset,
            lane,
            remaining: AtomicUsize::new(deliveries),
            bytes,
            timestamp_ms,
            read_at: Instant::now(),
        })
    }

    /// One delivery of this record is final.
    pub fn finish_one(&self) {
        // AcqRel: the last finisher must see every other finisher's work
        // before it moves the watermark.
        let before = self.remaining.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(
            before > 0,
            "a ticket finished more often than it has deliveries"
        );
        if before == 1 {
            self.partition.complete(self.offset, self.lane);
            self.partition
                .budget
                .release(1, self.bytes + DELIVERY_OVERHEAD);
        } else if before > 1 {
            self.partition.budget.release(0, DELIVERY_OVERHEAD);
        }
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// When this replica read the record.
    pub fn read_at(&self) -> Instant {
        self.read_at
    }

    pub fn partition(&self) -> &Arc<PartitionOffsets> {
        &self.partition
    }

    /// The epoch of the source partition this ticket's record was read
    /// from; `None` for an internal-topic record.
    pub fn source_epoch(&self) -> Option<u64> {
        self.lane.is_none().then_some(self.partition.epoch)
    }
}

impl Drop for Ticket {
    /// Unfinished: give the memory back at once. A source record's offset
    /// never completes (it is read again); an internal-topic record goes
    /// back under its endpoint's hold.
    fn drop(&mut self) {
        let left = *self.remaining.get_mut();
        if left == 0 {
            return;
        }
        self.partition
            .budget
            .release(1, self.bytes + left * DELIVERY_OVERHEAD);
        self.partition
            .abandon(self.offset, self.lane, self.timestamp_ms);
    }
}

/// Which partitions hold backlog for which endpoint, and a wake-up for each
/// endpoint's reader when a hold opens.
#[derive(Debug)]
pub struct HoldIndex {
    lanes: Mutex<HashMap<usize, Vec<Arc<PartitionOffsets>>>>,
    /// Lanes that got a hold while they had none: their reader must start.
    started: mpsc::UnboundedSender<usize>,
    wake: Mutex<HashMap<usize, Arc<Notify>>>,
    /// Losses found since the backlog metrics last took them (bounded: one
    /// entry per closed hold, taken every second).
    lost: Mutex<Vec<Lost>>,
}

/// Deliveries of an endpoint that were waiting under a hold and are no
/// longer in the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Whose they were, when known: a hold's. The main reader finding a
    /// gap cannot tell.
    pub lane: Option<usize>,
    pub topic: Arc<str>,
    pub partition: i32,
    pub deliveries: u64,
}

impl HoldIndex {
    /// The receiver gets a lane's index when it needs a reader (at most
    /// once until [`HoldIndex::take`] found it without holds: so at most one
    /// message per lane is ever waiting).
    pub fn new() -> (Arc<HoldIndex>, mpsc::UnboundedReceiver<usize>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(HoldIndex {
                lanes: Mutex::default(),
                started: tx,
                wake: Mutex::default(),
                lost: Mutex::default(),
            }),
            rx,
        )
    }

    fn opened(&self, lane: usize, partition: Arc<PartitionOffsets>) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let list = lanes.entry(lane).or_default();
        let first = list.is_empty();
        if !list.iter().any(|p| Arc::ptr_eq(p, &partition)) {
            list.push(partition);
        }
        drop(lanes);
        if first {
            let _ = self.started.send(lane);
        }
        self.waker(lane).notify_one();
    }

    /// The wake-up a lane's reader waits on for new holds.
    pub fn waker(&self, lane: usize) -> Arc<Notify> {
        self.wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(lane)
            .or_default()
            .clone()
    }

    /// The partitions where `lane` has an open hold; forgets the others.
    /// When none is left the lane is forgotten, and its reader must end:
    /// the next hold sends the lane again.
    pub fn take(&self, lane: usize, tracker: &OffsetTracker) -> Vec<Arc<PartitionOffsets>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = lanes.get_mut(&lane) else {
            return Vec::new();
        };
        list.retain(|p| p.has_open_hold(lane) && tracker.is_current(p));
        let out = list.clone();
        if out.is_empty() {
            lanes.remove(&lane);
        }
        out
    }

    fn lost(&self, lost: Lost) {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(lost);
    }

    /// The losses found since the last call.
    pub fn take_lost(&self) -> Vec<Lost> {
        std::mem::take(&mut *self.lost.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every partition with a hold of `lane` (for the backlog metrics).
    pub fn partitions(&self, lane: usize) -> Vec<Arc<PartitionOffsets>> {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&lane)
            .cloned()
            .unwrap_or_default()
    }

    /// Lanes with holds.
    pub fn lanes(&self) -> Vec<usize> {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

/// Assigned partitions by topic, then partition number.
type Assigned = HashMap<Arc<str>, HashMap<i32, Arc<PartitionOffsets>>>;

/// Every partition this consumer owns right now.
#[derive(Debug)]
pub struct OffsetTracker {
    topics: Mutex<Assigned>,
    budget: Arc<Budget>,
    holds: Arc<HoldIndex>,
}

impl OffsetTracker {
    pub fn new(budget: Arc<Budget>, holds: Arc<HoldIndex>) -> OffsetTracker {
        OffsetTracker {
            topics: Mutex::default(),
            budget,
            holds,
        }
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn holds(&self) -> &Arc<HoldIndex> {
        &self.holds
    }

    /// How many partitions are assigned now.
    pub fn assigned(&self) -> usize {
        self.lock().values().map(|parts| parts.len()).sum()
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
                    self.budget.clone(),
                    self.holds.clone(),
                )),
            );
        }
    }

    /// Partitions were revoked: forget them and return their final
    /// positions, to be committed before the new owner starts reading.
    /// Their unfinished records keep their memory until they finish or are
    /// dropped; their holds go with them (the new owner reads from the
    /// committed position, which is behind every hold).
    pub fn revoke<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<(Arc<str>, i32, i64)> {
        let mut topics = self.lock();
        let mut out = Vec::new();
        for (topic, partition) in partitions {
            if let Some(parts) = topics.get_mut(topic) {
                if let Some(p) = parts.remove(&partition) {
                    if let Some(w) = p.watermark() {
                        out.push((p.topic.clone(), partition, w));
                    }
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

    /// What to do with a delivery spilled from `source` while that
    /// partition had assignment `epoch`, now that it came back.
    ///
    /// After a crash or a rebalance the partition's new assignment reads
    /// from the committed offset, which an ordered endpoint's blocked key
    /// held behind its head: the source record of the spilled copy is read
    /// again, and routed again in its place in the source's order. The old
    /// copy, back from the spill topic, could overtake the key's head.
    /// Once the main reader has read that record itself, the old copy is
    /// [`Returned::Superseded`] (the caller still checks that the record
    /// was routed to the endpoint again). Before the reader got there it is
    /// [`Returned::NotYet`]: given back for now; so is it, for up to
    /// [`UNDECIDED_MAX`] after the assignment, while the reader has read
    /// nothing at all. Otherwise it is delivered: when this replica does
    /// not own the source partition, when the record was not read again
    /// (the assignment started after it, or it is gone from the topic).
    pub fn returned(&self, source: &SourceRef, epoch: u64) -> Returned {
        let Some(p) = self.partition(&source.topic, source.partition) else {
            return Returned::Deliver;
        };
        if p.epoch == epoch {
            return Returned::Deliver;
        }
        match p.has_read(source.offset) {
            Some(true) => Returned::Superseded,
            Some(false) => Returned::Deliver,
            None if p.started() || p.assigned_at.elapsed() < UNDECIDED_MAX => Returned::NotYet,
            None => Returned::Deliver,
        }
    }

    /// Whether `p` is still the state of an assigned partition (not one
    /// revoked since, even if it was assigned again).
    pub fn is_current(&self, p: &Arc<PartitionOffsets>) -> bool {
        self.partition(&p.topic, p.partition)
            .is_some_and(|q| Arc::ptr_eq(&q, p))
    }

    /// Positions that differ from what the broker confirmed, for a commit.
    pub fn commit_candidates(&self) -> Vec<(Arc<str>, i32, i64)> {
        let topics = self.lock();
        let mut out = Vec::new();
        for parts in topics.values() {
            for p in parts.values() {
                if let Some(w) = p.commit_candidate() {
                    out.push((p.topic.clone(), p.partition, w));
                }
            }
        }
        out
    }

    /// Every assigned partition's current watermark, committed or not.
    pub fn positions(&self) -> Vec<(Arc<str>, i32, i64)> {
        let topics = self.lock();
        topics
            .values()
            .flat_map(|parts| parts.values())
            .filter_map(|p| p.watermark().map(|w| (p.topic.clone(), p.partition, w)))
            .collect()
    }

    /// The broker confirmed these positions as committed.
    pub fn confirm(&self, committed: &[(Arc<str>, i32, i64)]) {
        for (topic, partition, offset) in committed {
            if let Some(p) = self.partition(topic, *partition) {
                p.confirm(*offset);
            }
        }
    }

    /// Every partition's current watermark and pending count (for metrics,
    /// the per-partition cap and shutdown).
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
mod tests;
