//! Backlog readers: one per endpoint that has work waiting in Kafka under a
//! hold (spilled deliveries, or retries that came due while it had no
//! room), bringing that work back at the endpoint's own pace.
//!
//! The main consumer reads every internal-topic partition once, in order,
//! and never waits: a record whose endpoint has no room is left under that
//! endpoint's hold (see [`crate::offsets`]). Each endpoint with holds gets
//! a reader of its own, with a consumer of its own (no group: it only
//! reads, from the holds' cursors), which hands the endpoint's records to
//! its lane whenever the lane has room, skipping everyone else's. So two
//! lagging endpoints that share a partition each drain at their own speed:
//! neither waits for the other, and the faster one is not held to the
//! pace of the slower. The price is reading the partition once more per
//! lagging endpoint; `docs/architecture.md` weighs this against the
//! alternatives.
//!
//! Readers are started when an endpoint's first hold opens and end when its
//! holds are gone. Their consumers are opened only while there is room to
//! fill, at most `pipeline.backlog_readers` at a time. With more lagging
//! endpoints than that, they take turns: a reader gives its consumer up
//! after [`TURN`] when another waits for one (the permits go first come,
//! first served), so that no backlog waits for another to be drained.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::dlq::DeadLetters;
use crate::endpoints::Routing;
use crate::kafka::header_str;
use crate::lane::{Job, LaneHandle, Refused};
use crate::offsets::{OffsetTracker, PartitionOffsets, ReaderStep, Returned, Ticket};
use crate::park;
use crate::spill;

/// How often a reader looks again at its holds without being woken.
const REFRESH: Duration = Duration::from_millis(250);
/// How long a reader keeps its consumer open without room to fill.
const IDLE_CLOSE: Duration = Duration::from_secs(5);
/// How long a reader keeps its consumer while another reader waits for
/// one: long enough that reopening (an assignment and a first fetch, some
/// hundreds of milliseconds) costs little of it.
const TURN: Duration = Duration::from_secs(5);

/// What every reader shares.
pub struct Backlogs {
    /// The endpoints, as the manager publishes them.
    pub routing: watch::Receiver<Arc<Routing>>,
    pub tracker: Arc<OffsetTracker>,
    /// For records of an endpoint deleted while they waited.
    pub dead_letters: Arc<DeadLetters>,
    /// A consumer configuration without a group: readers only read.
    pub consumer: ClientConfig,
    pub max_event_bytes: usize,
    /// Bounds the readers' open consumers.
    pub permits: Arc<Semaphore>,
    /// Readers waiting for one of `permits`.
    pub waiting: AtomicUsize,
    /// Internal-topic records the main reader found deleted, by topic.
    pub lost_records: prometheus::IntCounterVec,
    /// `dispatcher_spill_superseded_total`.
    pub superseded: prometheus::IntCounter,
}

impl Backlogs {
    /// Start a reader for each lane whose first hold opens, until shutdown;
    /// keep the backlog gauges current meanwhile.
    pub async fn run(
        self,
        mut started: mpsc::UnboundedReceiver<usize>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        let mut readers = JoinSet::new();
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        let mut shown: Vec<usize> = Vec::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                lane = started.recv() => match lane {
                    Some(lane) => {
                        let handle = this.routing.borrow().lane(lane).cloned();
                        match handle {
                            Some(handle) => {
                                readers.spawn(this.clone().read(lane, handle, shutdown.clone()));
                            }
                            // Gone: a deleted endpoint's lane ends only once
                            // it has no hold left.
                            None => tracing::warn!(lane, "backlog for a lane that is gone"),
                        }
                    }
                    None => break,
                },
                Some(ended) = readers.join_next(), if !readers.is_empty() => {
                    if let Err(e) = ended {
                        if e.is_panic() {
                            tracing::error!(error = %e, "a backlog reader panicked");
                        }
                    }
                }
                _ = gauges.tick() => shown = this.update_gauges(shown),
            }
        }
        readers.shutdown().await;
    }

    /// Backlog size and age per endpoint with holds; zero for those that
    /// had some at the last update and have none now.
    fn update_gauges(&self, before: Vec<usize>) -> Vec<usize> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let lanes = self.tracker.holds().lanes();
        let routing = self.routing.borrow().clone();
        for lost in self.tracker.holds().take_lost() {
            match lost.lane.and_then(|l| routing.lane(l)) {
                Some(h) => {
                    tracing::error!(
                        endpoint = %h.endpoint_id, topic = %lost.topic, partition = lost.partition,
                        deliveries = lost.deliveries,
                        "DELIVERIES LOST: deleted from the topic before they came back (its retention is shorter than the backlog was old)"
                    );
                    h.metrics.backlog_lost.inc_by(lost.deliveries);
                }
                None => {
                    tracing::error!(
                        topic = %lost.topic, partition = lost.partition, records = lost.deliveries,
                        "DELIVERIES LOST: records deleted from an internal topic before they were read (its retention is shorter than the backlog was old)"
                    );
                    self.lost_records
                        .with_label_values(&[&lost.topic])
                        .inc_by(lost.deliveries);
                }
            }
        }
        for &lane in before.iter().filter(|l| !lanes.contains(l)) {
            if let Some(h) = routing.lane(lane) {
                h.metrics.backlog.set(0);
                h.metrics.backlog_age.set(0.0);
            }
        }
        for &lane in &lanes {
            let Some(h) = routing.lane(lane) else {
                continue;
            };
            let (mut waiting, mut oldest) = (0u64, None::<i64>);
            for p in self.tracker.holds().partitions(lane) {
                if let Some((n, o)) = p.backlog(lane) {
                    waiting += n;
                    oldest = match (oldest, o) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            h.metrics.backlog.set(waiting as i64);
            h.metrics
                .backlog_age
                .set(oldest.map_or(0.0, |o| (now_ms - o).max(0) as f64 / 1000.0));
        }
        lanes
    }

    /// Whether `reader` had its consumer for a [`TURN`] while another
    /// reader waits for one.
    fn turn_over(&self, reader: &Option<Reader>) -> bool {
        reader.as_ref().is_some_and(|r| r.opened.elapsed() >= TURN)
            && self.waiting.load(Ordering::Acquire) > 0
    }

    /// One endpoint's reader: until its holds are gone.
    async fn read(
        self: Arc<Self>,
        lane: usize,
        handle: LaneHandle,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let handle = &handle;
        let waker = self.tracker.holds().waker(lane);
        let mut reader: Option<Reader> = None;
        let mut holds: Vec<Arc<PartitionOffsets>> = Vec::new();
        let mut refresh_at = Instant::now();
        let mut no_room_since: Option<Instant> = None;
        // Since when its consumer has had nothing to read.
        let mut quiet_since: Option<Instant> = None;
        // Whether the consumer's assignment must be checked against the
        // holds (see [`sync`]): after the holds were looked at again (a
        // cursor that moved back wakes the reader for that), for a new
        // consumer, and when it finds a cursor moved. Not at every record:
        // with hundreds of holds, comparing them all per record took over
        // half of a replica's CPU while it drained a spilled backlog.
        let mut resync = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if Instant::now() >= refresh_at {
                holds = self.tracker.holds().take(lane, &self.tracker);
                refresh_at = Instant::now() + REFRESH;
                resync = true;
                if holds.is_empty() {
                    // The index forgot the lane with its last hold: the next
                    // hold starts a new reader.
                    return;
                }
            }
            if !handle.inbox().has_room() {
                quiet_since = None;
                let since = *no_room_since.get_or_insert_with(Instant::now);
                if reader.is_some() && (since.elapsed() >= IDLE_CLOSE || self.turn_over(&reader)) {
                    // Give the consumer (and its permit) up while the lane
                    // is busy or cannot send; reopened when room comes.
                    reader = None;
                }
                tokio::select! {
                    _ = handle.inbox().room() => {}
                    _ = waker.notified() => refresh_at = Instant::now(),
                    _ = tokio::time::sleep(REFRESH) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            no_room_since = None;
            if self.turn_over(&reader) {
                // Another lagging endpoint waits for a consumer: its turn.
                reader = None;
            }
            if reader.is_none() {
                self.waiting.fetch_add(1, Ordering::AcqRel);
                let permit = tokio::select! {
                    p = self.permits.clone().acquire_owned() => p,
                    _ = shutdown.changed() => {
                        self.waiting.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                };
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                let Ok(permit) = permit else { return };
                match self.consumer.create::<StreamConsumer>() {
                    Ok(consumer) => {
                        reader = Some(Reader {
                            consumer,
                            assigned: Assigned::default(),
                            topics: Vec::new(),
                            in_consumer: HashSet::new(),
                            paused: HashSet::new(),
                            opened: Instant::now(),
                            _permit: permit,
                        });
                        resync = true;
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %handle.endpoint_id, error = %e, "cannot create a backlog reader; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let Some(r) = reader.as_mut() else {
                continue;
            };
            if resync {
                if let Err(e) = sync(r, lane, &holds) {
                    tracing::warn!(endpoint = %handle.endpoint_id, error = %e, "backlog reader assignment failed; reopening");
                    reader = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                resync = false;
            }
            let Reader {
                consumer,
                assigned,
                topics,
                ..
            } = r;
            let msg = tokio::select! {
                m = tokio::time::timeout(REFRESH, consumer.recv()) => m,
                _ = waker.notified() => { refresh_at = Instant::now(); continue }
                _ = shutdown.changed() => continue,
            };
            match msg {
                Ok(Ok(msg)) => {
                    quiet_since = None;
                    match self.take(lane, handle, assigned, topics, &msg) {
                        Took::Next => {}
                        Took::Resync => resync = true,
                        Took::Stop(stopped) => {
                            assigned.remove(&stopped);
                            refresh_at = Instant::now();
                        }
                        // Given back undecided (an ordered endpoint's copy
                        // whose source partition has not been read yet):
                        // not again at once.
                        Took::Later => {
                            resync = true;
                            tokio::select! {
                                _ = tokio::time::sleep(REFRESH) => {}
                                _ = shutdown.changed() => {}
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(endpoint = %handle.endpoint_id, error = %e, "backlog reader error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Nothing to read right now: a hold whose reader has seen
                // everything is done, even without a later record to show
                // it; then look at the holds again.
                Err(_) => {
                    // Only once quiet for a while: closing a hold at every
                    // pause between spilled records would make the lane
                    // switch between spilling and not, and lose its pace.
                    let quiet = *quiet_since.get_or_insert_with(Instant::now);
                    if quiet.elapsed() >= IDLE_CLOSE {
                        assigned.retain(|_, (partition, _)| !partition.reader_idle(lane));
                    }
                    refresh_at = Instant::now();
                }
            }
        }
    }

    /// Act on one record.
    fn take(
        &self,
        lane: usize,
        handle: &LaneHandle,
        assigned: &mut Assigned,
        topics: &[Arc<str>],
        msg: &BorrowedMessage<'_>,
    ) -> Took {
        let Some(topic) = topics.iter().find(|t| t.as_ref() == msg.topic()) else {
            return Took::Next;
        };
        let key = (topic.clone(), msg.partition());
        let Some((partition, next)) = assigned.get_mut(&key) else {
            return Took::Next;
        };
        let offset = msg.offset();
        *next = offset + 1;
        let own = header_str(msg, "park.endpoint_id") == Some(handle.endpoint_id.as_ref());
        match partition.reader_step(lane, offset, own) {
            ReaderStep::Stop => return Took::Stop(key),
            ReaderStep::Skip => return Took::Next,
            ReaderStep::Rewind => {
                // Read again from the cursor: the next sync seeks there.
                *next = i64::MAX;
                return Took::Resync;
            }
            ReaderStep::Take => {}
        }
        let payload_len = msg.payload_len();
        let ts = msg.timestamp().to_millis().unwrap_or(0);
        let ticket = Ticket::issue_held(partition.clone(), offset, lane, payload_len, ts);
        let parked = match park::parse(msg, self.max_event_bytes) {
            Ok(p) => p,
            Err(_) => {
                // Damaged: the main reader dead-lettered it when it read it.
                ticket.finish_one();
                return Took::Next;
            }
        };
        let routing = self.routing.borrow().clone();
        match spill::returned(
            &self.tracker,
            &routing,
            lane,
            parked.source_epoch,
            &parked.event,
        ) {
            Returned::Deliver => {}
            Returned::Superseded => {
                self.superseded.inc();
                ticket.finish_one();
                partition.reader_progress(lane, ts);
                return Took::Next;
            }
            Returned::NotYet => {
                // Back under the hold, the cursor with it.
                drop(ticket);
                return Took::Later;
            }
        }
        let job = Job {
            event: Arc::new(parked.event),
            ticket,
            parked: Some(Box::new((parked.delivery_id, parked.state))),
        };
        match handle.inbox().give_back(job) {
            Ok(()) => {
                handle.metrics.backlog_drained.inc();
                partition.reader_progress(lane, ts);
            }
            // No room after all: dropping it puts it back under the hold,
            // and the cursor with it.
            Err(Refused::NoRoom(job)) => {
                drop(job);
                return Took::Resync;
            }
            Err(Refused::Closed(job)) => {
                job.dead_letter_deleted(handle.endpoint_id.clone(), &self.dead_letters)
            }
        }
        Took::Next
    }
}

/// What a reader does after [`Backlogs::take`].
enum Took {
    /// Read on.
    Next,
    /// Read on once the assignment is checked against the holds again: a
    /// cursor moved back.
    Resync,
    /// Stop reading this partition.
    Stop((Arc<str>, i32)),
    /// Read on after a while: the record was given back undecided.
    Later,
}

/// Partitions a reader reads, with the next offset expected from each.
/// Looked up once per record read: hashed with foldhash (keys are the
/// dispatcher's own topic names and partition numbers).
type Assigned = HashMap<(Arc<str>, i32), (Arc<PartitionOffsets>, i64), foldhash::fast::RandomState>;

/// A reader's consumer and what it reads.
struct Reader {
    consumer: StreamConsumer,
    assigned: Assigned,
    /// The topics of `assigned` (a few internal topics), to find a
    /// record's entry without comparing every key's name.
    topics: Vec<Arc<str>>,
    /// The partitions in the consumer's assignment: once added, never
    /// removed while it lives (see [`sync`]); those without a hold paused.
    in_consumer: HashSet<(Arc<str>, i32)>,
    paused: HashSet<(Arc<str>, i32)>,
    /// When it got its permit: see [`TURN`].
    opened: Instant,
    _permit: OwnedSemaphorePermit,
}

/// Read exactly the open holds, each from its cursor.
///
/// A partition joins the consumer's assignment (incrementally) the first
/// time one of its holds needs it, and stays: when its hold goes it is
/// paused, when it is needed again it is resumed, and when a cursor moved
/// (a record given back, whenever the lane has no room) it is sought. A
/// partition is never removed from a live reader's assignment, because
/// assigning again stops every partition's fetcher and starts it again,
/// and a reader whose holds came and went every few milliseconds (a
/// 32 MiB memory budget, the `slow-mix` load scenario) made librdkafka
/// abort the whole process: assertion `rktp->rktp_started` in
/// `rd_kafka_assignment_partition_stopped`, after a stop was requested
/// twice for one partition, as far as we can tell the race of librdkafka
/// issue 5573 (fixed after 2.15; we bundle 2.12). The assignment is bounded
/// by the internal topics' partitions.
fn sync(
    reader: &mut Reader,
    lane: usize,
    holds: &[Arc<PartitionOffsets>],
) -> rdkafka::error::KafkaResult<()> {
    let Reader {
        consumer,
        assigned,
        topics,
        in_consumer,
        paused,
        ..
    } = reader;
    let mut want = Assigned::default();
    for p in holds {
        if let Some(pos) = p.reader_position(lane) {
            let key = (p.topic.clone(), p.partition);
            // Reading on from where the consumer is, unless the cursor
            // moved back behind it.
            let next = match assigned.get(&key) {
                Some((q, next)) if Arc::ptr_eq(q, p) && *next <= pos => *next,
                _ => pos,
            };
            want.insert(key, (p.clone(), next));
        }
    }
    let unchanged = want.len() == assigned.len()
        && want.iter().all(|(k, (p, pos))| {
            assigned
                .get(k)
                .is_some_and(|(q, next)| Arc::ptr_eq(p, q) && next == pos)
        });
    if unchanged {
        return Ok(());
    }
    let mut add = TopicPartitionList::new();
    for ((topic, partition), (_, pos)) in &want {
        if !in_consumer.contains(&(topic.clone(), *partition)) {
            add.add_partition_offset(topic, *partition, Offset::Offset(*pos))?;
        }
    }
    if add.count() > 0 {
        consumer.incremental_assign(&add)?;
    }
    let mut pause = TopicPartitionList::new();
    for key in in_consumer.iter() {
        if !want.contains_key(key) && !paused.contains(key) {
            pause.add_partition(&key.0, key.1);
        }
    }
    if pause.count() > 0 {
        consumer.pause(&pause)?;
        for e in pause.elements() {
            paused.insert((Arc::from(e.topic()), e.partition()));
        }
    }
    let mut resume = TopicPartitionList::new();
    for (key, (p, pos)) in &want {
        if !in_consumer.contains(key) {
            continue; // just added, at its cursor
        }
        let moved = assigned
            .get(key)
            .is_none_or(|(q, next)| !Arc::ptr_eq(p, q) || next != pos);
        if moved {
            consumer.seek(&key.0, key.1, Offset::Offset(*pos), SEEK_TIMEOUT)?;
        }
        if paused.remove(key) {
            resume.add_partition(&key.0, key.1);
        }
    }
    if resume.count() > 0 {
        consumer.resume(&resume)?;
    }
    in_consumer.extend(want.keys().cloned());
    topics.clear();
    for (topic, _) in want.keys() {
        if !topics.contains(topic) {
            topics.push(topic.clone());
        }
    }
    *assigned = want;
    Ok(())
}

/// How long a seek may take: a local operation (the fetcher's position),
/// answered by librdkafka's main thread, not by a broker.
const SEEK_TIMEOUT: Duration = Duration::from_secs(1);
