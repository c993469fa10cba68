//! The producer: writes seed events into the source topic at a target rate
//! (or as fast as the broker takes them), for N events or T seconds,
//! whichever comes first, round-robin over the partitions.
//!
//! Before each event is handed to Kafka, the deliveries it must cause are
//! registered with the [`Expectations`]; an event the broker then refuses is
//! withdrawn again in the delivery callback, so that it never counts as lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Serialize;

use crate::ledger::Ledger;
use crate::workload::{Expected, Record, Routing, Workload};

/// How long the end of a production waits for the broker's acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The deliveries every produced event must cause, kept in the ledger, with
/// running per-endpoint totals for per-phase figures.
pub struct Expectations {
    routing: Mutex<Routing>,
    ledger: Arc<Ledger>,
    per_endpoint: Vec<AtomicU64>,
    scratch: Mutex<Vec<Expected>>,
}

impl Expectations {
    pub fn new(routing: Routing, ledger: Arc<Ledger>) -> Expectations {
        let n = routing.endpoint_ids().len();
        Expectations {
            routing: Mutex::new(routing),
            ledger,
            per_endpoint: (0..n).map(|_| AtomicU64::new(0)).collect(),
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// Deliveries registered so far, per endpoint.
    pub fn per_endpoint(&self) -> Vec<u64> {
        self.per_endpoint
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    fn each(&self, record_value: &[u8], mut f: impl FnMut(&Expected)) {
        let record = Record {
            event_type: "",
            id: String::new(),
            value: bytes::Bytes::copy_from_slice(record_value),
            contact: None,
        };
        let Some(event) = record.decode() else {
            return;
        };
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.routing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expected(&event, &mut scratch);
        scratch.iter().for_each(&mut f);
    }

    /// Register what `record` must cause.
    pub fn register(&self, record: &Record) {
        self.each(&record.value, |e| {
            if self.ledger.expect(e.id, e.endpoint) {
                self.per_endpoint[e.endpoint].fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Take back what the record with this value would have caused.
    pub fn withdraw(&self, value: &[u8]) {
        self.each(value, |e| {
            self.ledger.withdraw(e.id);
            self.per_endpoint[e.endpoint].fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Counts acknowledgements and failures, and withdraws failed events.
struct Acks {
    expectations: Option<Arc<Expectations>>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((_, message)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let (Some(e), Some(value)) = (&self.expectations, message.payload()) {
                e.withdraw(value);
            }
        }
    }
}

/// What to produce.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topic: String,
    pub partitions: i32,
    /// Stop after this many events.
    pub events: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Events per second; `None` is as fast as possible.
    pub rate: Option<f64>,
}

/// How a production went.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Produced {
    /// Events the broker acknowledged.
    pub events: u64,
    /// Events the broker refused (withdrawn from the expectations).
    pub failed: u64,
    pub elapsed_s: f64,
    pub events_per_s: f64,
}

/// Produce as `plan` says. Blocks (run it on a blocking thread). `counter`
/// follows the events handed to Kafka, for progress lines; `stop` ends the
/// production early.
pub fn produce(
    bootstrap: &str,
    plan: &Plan,
    workload: &mut Workload,
    expectations: Option<Arc<Expectations>>,
    counter: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<Produced> {
    if plan.events.is_none() && plan.duration.is_none() {
        bail!("a production needs a number of events or a duration");
    }
    if plan.partitions < 1 {
        bail!("the source topic needs at least one partition");
    }
    let failed = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("log_level", "3")
        .create_with_context(Acks {
            expectations: expectations.clone(),
            failed: failed.clone(),
        })
        .context("creating the producer")?;

    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);
    let mut sent = 0u64;
    let mut partition = 0;
    loop {
        if stop.load(Ordering::Relaxed)
            || plan.events.is_some_and(|n| sent >= n)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        if let Some(rate) = plan.rate {
            // Pace by the schedule, not by the gap since the last send, so
            // that a stall is made up for and the mean rate holds.
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(5)));
                continue;
            }
        }
        let record = workload.next_record();
        if let Some(e) = &expectations {
            e.register(&record);
        }
        // A contact's events all go to one partition, as a producer must
        // for ordered delivery per key.
        let to = record
            .contact
            .map_or(partition, |c| (c % plan.partitions as usize) as i32);
        let mut pending = BaseRecord::to(&plan.topic)
            .partition(to)
            .key(record.id.as_str())
            .payload(&record.value[..]);
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if stop.load(Ordering::Relaxed) {
                        if let Some(e) = &expectations {
                            e.withdraw(&record.value);
                        }
                        return finish(&producer, sent, &failed, started);
                    }
                    pending = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    if let Some(ex) = &expectations {
                        ex.withdraw(&record.value);
                    }
                    return Err(e).context("producing an event");
                }
            }
        }
        sent += 1;
        counter.fetch_add(1, Ordering::Relaxed);
        partition = (partition + 1) % plan.partitions;
    }
    finish(&producer, sent, &failed, started)
}

fn finish(
    producer: &ThreadedProducer<Acks>,
    sent: u64,
    failed: &AtomicU64,
    started: Instant,
) -> anyhow::Result<Produced> {
    let elapsed = started.elapsed().as_secs_f64();
    producer
        .flush(FLUSH_TIMEOUT)
        .context("waiting for the broker to acknowledge the events")?;
    let failed = failed.load(Ordering::Relaxed);
    Ok(Produced {
        events: sent.saturating_sub(failed),
        failed,
        elapsed_s: elapsed,
        events_per_s: sent as f64 / elapsed.max(1e-9),
    })
}
