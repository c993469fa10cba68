//! Spilling: a lane that cannot keep up has its fresh deliveries written to
//! the spill topic (`kafka.spill_topic`), once and in order, so the source
//! commits past them and never waits on that endpoint.
//!
//! A lane asks for it (its inbox is full, it lags the other lanes by
//! `pipeline.spill_after`, it is over its share of the memory budget, or it
//! cannot send at all), or the source does (the budget kept it paused for
//! `spill_after`, and this lane still holds fresh deliveries). From then on every fresh delivery for it goes to
//! the spill topic, and what it still had queued goes first, all written
//! from the source task, so the spilled backlog keeps the source's order.
//! Records are keyed by endpoint and source partition: what an endpoint
//! spills from one source partition lies, in order, in one spill partition. They come back through the consumer like parked retries, with
//! no delay; when the lane has no room the endpoint's hold keeps its place
//! (see [`crate::offsets`] and [`crate::backlog`]).
//!
//! The lane stops spilling once everything this replica spilled for it has
//! come back, so a fresh delivery never overtakes a spilled one. (When the
//! spill partition is another replica's, this replica cannot see that and
//! stops as soon as the lane has room: order then holds per replica.)
//!
//! A spilled fresh delivery carries the epoch of the source partition's
//! assignment that read it. When an ordered endpoint's comes back after a
//! later assignment read its source record again and routed it to the
//! endpoint again (a crash or a rebalance since, with a key's head holding
//! the commit before it), it is left final unsent: the copy read again
//! takes its place in the key's order ([`returned`];
//! [`crate::park::Parked::source_epoch`]).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use transports::{BoxFuture, Delivery, DeliveryId, Event};

use crate::dlq::{DeadLetter, DeadLetters};
use crate::endpoints::Routing;
use crate::fatal::Fatal;
use crate::kafka::{classify, Severity};
use crate::lane::{Job, LaneHandle};
use crate::offsets::{OffsetTracker, Returned};
use crate::park::Parker;
use crate::route::{RecordMeta, Router};

/// What becomes of `event`, a delivery of lane `lane` back from an
/// internal topic, with `source_epoch` from its record
/// ([`crate::park::Parked::source_epoch`]): see [`OffsetTracker::returned`].
/// Only an ordered endpoint's spilled copies are checked: for the others a
/// second copy is only a duplicate (same delivery id), which the delivery
/// contract allows.
pub fn returned(
    tracker: &OffsetTracker,
    routing: &Routing,
    lane: usize,
    source_epoch: Option<u64>,
    event: &Event,
) -> Returned {
    let ordered = routing.lane(lane).is_some_and(|l| l.metrics.ordered());
    let Some(epoch) = source_epoch.filter(|_| ordered) else {
        return Returned::Deliver;
    };
    match tracker.returned(&event.source, epoch) {
        // Read again, but sent again only if routed to the endpoint again:
        // a copy the endpoints' changes since would no longer route there
        // (or that cannot be told) is delivered as it was taken.
        Returned::Superseded if !routed_again(routing, lane, event) => Returned::Deliver,
        decided => decided,
    }
}

/// Whether the source, reading `event`'s record now, routes it to `lane`.
/// `false` when that needs a record header, which a spilled record no
/// longer has.
fn routed_again(routing: &Routing, lane: usize, event: &Event) -> bool {
    struct Spilled<'a> {
        key: Option<&'a [u8]>,
        wanted_header: Cell<bool>,
    }
    impl RecordMeta for Spilled<'_> {
        fn key(&self) -> Option<&[u8]> {
            self.key
        }
        fn header(&self, _: &str) -> Option<&[u8]> {
            self.wanted_header.set(true);
            None
        }
    }
    if !routing.routes_to(lane) {
        return false;
    }
    let record = Spilled {
        key: event.record_key.as_deref(),
        wanted_header: Cell::new(false),
    };
    let mut routed = false;
    Router::from_table(routing.table.clone()).route_record(event, &record, |l| {
        routed |= l == lane;
    });
    routed && !record.wanted_header.get()
}

/// What this replica spilled for one lane.
#[derive(Debug, Default, Clone)]
struct Mark {
    /// Writes not yet acknowledged.
    in_flight: usize,
    /// The newest acknowledged record per spill partition written to
    /// (partition, offset); as many entries as spill partitions at most.
    last: Vec<(i32, i64)>,
}

enum Finished {
    Spilled {
        lane: usize,
        job: Job,
        id: DeliveryId,
        result: Result<(i32, i64), KafkaError>,
    },
    /// A write that failed transiently, to be queued again after a pause.
    Again {
        lane: usize,
        job: Job,
        id: DeliveryId,
    },
    DeadLettered,
}

/// The source's spill writer.
pub struct Spill {
    parker: Arc<Parker>,
    dead_letters: Arc<DeadLetters>,
    fatal: Arc<Fatal>,
    marks: Vec<Mark>,
    writes: FuturesUnordered<BoxFuture<'static, Finished>>,
}

impl Spill {
    pub fn new(
        parker: Arc<Parker>,
        dead_letters: Arc<DeadLetters>,
        fatal: Arc<Fatal>,
        lanes: usize,
    ) -> Spill {
        // Grows as endpoints are added (see `enqueue`).
        Spill {
            parker,
            dead_letters,
            fatal,
            marks: vec![Mark::default(); lanes],
            writes: FuturesUnordered::new(),
        }
    }

    /// Writes not yet acknowledged (each holds its record's memory).
    pub fn in_flight(&self) -> usize {
        self.writes.len()
    }

    /// Spill `job` for `lanes[lane]`. When librdkafka's queue is full this
    /// waits for earlier writes to finish: Kafka as a whole is behind then,
    /// which is back-pressure on everything, not one endpoint's doing.
    pub async fn write(&mut self, lanes: &Routing, lane: usize, job: Job) {
        let Some(handle) = lanes.lane(lane) else {
            // Its endpoint is gone: nothing waits for this delivery.
            job.ticket.finish_one();
            return;
        };
        let id = match &job.parked {
            Some(p) => p.0,
            None => DeliveryId::derive(&job.event, &handle.endpoint_id),
        };
        let mut job = Some(job);
        while let Some(j) = job.take() {
            match self.enqueue(handle, j, id) {
                Ok(()) => return,
                Err(j) => {
                    job = Some(j);
                    match self.writes.next().await {
                        Some(done) => self.handle(done, lanes),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }
    }

    /// Hand one record to librdkafka; `Err` gives the job back when its
    /// queue is full.
    fn enqueue(&mut self, lane: &LaneHandle, job: Job, id: DeliveryId) -> Result<(), Job> {
        if self.marks.len() <= lane.index {
            self.marks.resize(lane.index + 1, Mark::default());
        }
        let state = job.parked.as_ref().map(|p| p.1.clone()).unwrap_or_default();
        let index = lane.index;
        let result = self.parker.spill(
            &lane.endpoint_id,
            id,
            &job.event,
            &state,
            job.ticket.source_epoch(),
        );
        let delivery = match result {
            Ok(delivery) => Some(delivery),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => return Err(job),
            Err(e) => {
                self.marks[index].in_flight += 1;
                self.writes.push(Box::pin(async move {
                    Finished::Spilled {
                        lane: index,
                        job,
                        id,
                        result: Err(e),
                    }
                }));
                return Ok(());
            }
        };
        self.marks[index].in_flight += 1;
        self.writes.push(Box::pin(async move {
            let result = match delivery {
                Some(d) => match d.await {
                    Ok(Ok(d)) => Ok((d.partition, d.offset)),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
                None => Err(KafkaError::Canceled),
            };
            Finished::Spilled {
                lane: index,
                job,
                id,
                result,
            }
        }));
        Ok(())
    }

    /// Resolves when a write finished; pass the result to [`Spill::finish`].
    /// Pending forever while nothing is being written.
    pub async fn next_finished(&mut self) -> FinishedWrite {
        match self.writes.next().await {
            Some(done) => FinishedWrite(done),
            None => std::future::pending().await,
        }
    }

    /// Act on a finished write.
    pub fn finish(&mut self, done: FinishedWrite, lanes: &Routing) {
        self.handle(done.0, lanes);
    }

    fn handle(&mut self, done: Finished, lanes: &Routing) {
        let (lane, job, id, result) = match done {
            Finished::Spilled {
                lane,
                job,
                id,
                result,
            } => (lane, job, id, result),
            Finished::Again { lane, job, id } => {
                self.marks[lane].in_flight = self.marks[lane].in_flight.saturating_sub(1);
                let Some(handle) = lanes.lane(lane) else {
                    job.ticket.finish_one();
                    return;
                };
                if let Err(job) = self.enqueue(handle, job, id) {
                    self.again(lane, job, id);
                }
                return;
            }
            Finished::DeadLettered => return,
        };
        let mark = &mut self.marks[lane];
        mark.in_flight = mark.in_flight.saturating_sub(1);
        let Some(handle) = lanes.lane(lane) else {
            // Its endpoint is gone meanwhile: the record in the spill topic
            // is dead-lettered when it is read back; nothing else waits.
            job.ticket.finish_one();
            return;
        };
        match result {
            Ok((partition, offset)) => {
                match mark.last.iter_mut().find(|(p, _)| *p == partition) {
                    Some((_, o)) => *o = (*o).max(offset),
                    None => mark.last.push((partition, offset)),
                }
                handle.metrics.spilled.inc();
                job.ticket.finish_one();
            }
            Err(e) => match classify(&e) {
                Severity::Transient => {
                    handle.metrics.spill_write_errors.inc();
                    tracing::warn!(endpoint = %handle.endpoint_id, error = %e, "spill write failed; retrying");
                    self.again(lane, job, id);
                }
                Severity::Permanent => {
                    // The spill topic refuses this record (too large for
                    // it): dead-letter it rather than lose it.
                    tracing::error!(endpoint = %handle.endpoint_id, delivery_id = %id, error = %e, "cannot spill; dead-lettering");
                    let dead_letters = self.dead_letters.clone();
                    let metrics = handle.metrics.clone();
                    let delivery = Delivery {
                        event: job.event.clone(),
                        endpoint_id: handle.endpoint_id.clone(),
                        id,
                        body: bytes::Bytes::new(),
                        attempt: 1,
                    };
                    self.writes.push(Box::pin(async move {
                        let error = format!("the spill topic refused the record: {e}");
                        let history = job.parked.as_ref().map(|p| p.1.history.clone());
                        let letter = DeadLetter::failed_delivery(
                            &delivery,
                            "unparkable",
                            &error,
                            history.as_deref().unwrap_or_default(),
                            None,
                        );
                        if dead_letters.write(letter).await.is_ok() {
                            metrics.dead_lettered.inc();
                            job.ticket.finish_one();
                        }
                        Finished::DeadLettered
                    }));
                }
                Severity::Fatal => {
                    // The job is dropped unfinished: its record is read
                    // again after the restart.
                    self.fatal.trip(format!(
                        "writing to the spill topic failed for good: {e} (check that kafka.spill_topic exists and that the dispatcher may write to it)"
                    ));
                }
            },
        }
    }

    /// Queue `job` again after a short pause (counted as in flight).
    fn again(&mut self, lane: usize, job: Job, id: DeliveryId) {
        self.marks[lane].in_flight += 1;
        self.writes.push(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Finished::Again { lane, job, id }
        }));
    }

    /// Whether `lane` may take fresh deliveries in memory again: nothing of
    /// its spilled backlog that this replica wrote is still out there.
    pub fn may_stop(&self, lane: &LaneHandle, tracker: &OffsetTracker, spill_topic: &str) -> bool {
        let Some(mark) = self.marks.get(lane.index) else {
            return true;
        };
        if mark.in_flight > 0
            || lane
                .live()
                .is_some_and(|i| i.evict_requested() || !i.has_room())
        {
            return false;
        }
        mark.last.iter().all(|&(partition, offset)| {
            match tracker.partition(spill_topic, partition) {
                Some(p) => p.passed(offset) && !p.has_open_hold(lane.index),
                // Another replica drains it: this one cannot tell.
                None => true,
            }
        })
    }
}

/// A finished spill write, for [`Spill::finish`].
pub struct FinishedWrite(Finished);
