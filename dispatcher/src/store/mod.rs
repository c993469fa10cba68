//! The endpoint store: endpoints as data, in a compacted Kafka topic
//! (`kafka.endpoints_topic`) that every replica follows, so a change made
//! through any replica's API applies on all of them within a second, and
//! survives restarts, with no database ("Kafka is the only state").
//!
//! A record's key is the endpoint id; its value a [`StoredEndpoint`] as
//! JSON: the endpoint with the same fields as a YAML endpoint, its version,
//! and its state (paused, disabled by a 410). A tombstone (no value)
//! deletes. Every record also carries its version in the header
//! [`VERSION_HEADER`].
//!
//! **Versions make writes compare-and-set, through the log itself.** A
//! write of version `v` applies only if the endpoint's version is `v - 1`
//! when the record is read (0 for an endpoint that never existed; a deleted
//! one keeps its last version). Every replica applies the records of a
//! partition in the same order with the same rule, so all agree on which
//! of two racing writes won: the first in the log. A writer waits until its
//! own replica has read its record back and tells the caller whether it
//! applied (see [`Store::write`]). A record without a version header (an
//! operator's manual tombstone) applies unconditionally.
//!
//! A record that cannot be read (not JSON, a key that does not match the
//! id) is logged, counted in `dispatcher_endpoint_store_bad_records_total`,
//! and skipped: the previous version stays in force.

mod follower;

pub use follower::Follower;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// The header that carries a record's version (decimal).
pub const VERSION_HEADER: &str = "dispatcher.version";

/// Outcomes of recent records kept for writers waiting on theirs.
const OUTCOMES_KEPT: usize = 10_000;

/// An endpoint as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEndpoint {
    /// 1 for a new endpoint, one more at every change.
    pub version: u64,
    /// The endpoint: the same fields as an endpoint in the YAML file,
    /// secrets encrypted (see [`crate::config`] for the schema).
    pub endpoint: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub state: EndpointState,
    /// When the version was written (RFC 3339), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// Run-time state that lives in the store, so every replica and every
/// restart agree on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointState {
    /// Nothing is sent; deliveries wait in Kafka until resumed.
    pub paused: bool,
    /// The endpoint answered 410 Gone (or its Slack channel is gone): its
    /// deliveries are dead-lettered until it is enabled again.
    pub disabled: bool,
}

/// A change the follower read, for whoever applies endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Upsert {
        id: String,
        stored: StoredEndpoint,
    },
    /// Deleted at `version`.
    Delete {
        id: String,
        version: u64,
    },
}

/// Why a write did not apply.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another write came first: the endpoint is at `current` (0: it does
    /// not exist).
    #[error("the endpoint changed meanwhile: it is at version {current}")]
    Conflict { current: u64 },
    /// Kafka did not take the record.
    #[error("the endpoints topic did not take the write: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The record was written but this replica did not read it back in time
    /// (it will still apply, or not, as the log decides).
    #[error("the write was not read back within {0:?}; it may still apply")]
    NotReadBack(Duration),
}

/// What the follower decided about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Stale { current: u64 },
    Bad,
}

/// An id's entry: its endpoint, or the version it was deleted at.
#[derive(Debug)]
enum Entry {
    Live(Compact),
    Deleted(u64),
}

impl Entry {
    fn version(&self) -> u64 {
        match self {
            Entry::Live(s) => s.version,
            Entry::Deleted(v) => *v,
        }
    }
}

/// A [`StoredEndpoint`] as the table holds it: its endpoint as JSON text.
/// A parsed map costs several times its text in small allocations, and
/// the table holds every endpoint of the store (100,000 on a replica the
/// scale issue sizes for) while it is read only by the API and at
/// start-up.
#[derive(Debug)]
struct Compact {
    version: u64,
    state: EndpointState,
    updated_at: Option<Box<str>>,
    endpoint: Box<str>,
}

/// A record's value as read: its endpoint kept as the record's own text
/// (checked to be a JSON object naming its key), not written out again.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    version: u64,
    #[serde(borrow)]
    endpoint: &'a serde_json::value::RawValue,
    #[serde(default)]
    state: EndpointState,
    #[serde(default)]
    updated_at: Option<String>,
}

impl Compact {
    /// The record `bytes` of endpoint `key`, or why it is not one.
    fn read(key: &str, bytes: &[u8]) -> Result<Compact, String> {
        let record: Record =
            serde_json::from_slice(bytes).map_err(|e| format!("not an endpoint record: {e}"))?;
        let text = record.endpoint.get();
        // Parsed in full once, so that what is kept as text is what
        // `expand` reads back (skipping over a value checks less: numbers
        // out of range, lone surrogates, depth), then dropped.
        let endpoint: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| format!("not an endpoint record: its `endpoint`: {e}"))?;
        if endpoint.get("id").and_then(|v| v.as_str()) != Some(key) {
            return Err("its endpoint's `id` is not its key".into());
        }
        Ok(Compact {
            version: record.version,
            state: record.state,
            updated_at: record.updated_at.map(String::into_boxed_str),
            endpoint: text.into(),
        })
    }

    fn expand(&self) -> StoredEndpoint {
        StoredEndpoint {
            version: self.version,
            // `Compact::read` parsed this text as a map before keeping it.
            endpoint: serde_json::from_str(&self.endpoint).unwrap_or_default(),
            state: self.state,
            updated_at: self.updated_at.as_deref().map(String::from),
        }
    }
}

/// The store as this replica sees it, and its way to write.
pub struct Store {
    topic: String,
    producer: FutureProducer,
    table: RwLock<BTreeMap<String, Entry>>,
    /// Per partition, the next offset the follower will read: every record
    /// before it is applied (or skipped).
    applied: watch::Sender<HashMap<i32, i64>>,
    outcomes: Mutex<VecDeque<((i32, i64), Outcome)>>,
    /// True once the follower read everything the topic held at start.
    caught_up: watch::Sender<bool>,
    changes: mpsc::UnboundedSender<Change>,
    bad_records: prometheus::IntCounter,
}

impl Store {
    /// A store over `topic`, writing with `producer` (idempotent, acks=all).
    /// Changes the follower reads once caught up go to the returned
    /// receiver; what it read before is in the table, for whoever applies
    /// endpoints to read once [`Store::caught_up`] resolves (at start-up,
    /// 100,000 changes queued for records already in the table would only
    /// be read and dropped). Start its [`Follower`] to fill it.
    pub fn new(
        topic: String,
        producer: FutureProducer,
        bad_records: prometheus::IntCounter,
    ) -> (Arc<Store>, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Arc::new(Store {
            topic,
            producer,
            table: RwLock::default(),
            applied: watch::channel(HashMap::new()).0,
            outcomes: Mutex::default(),
            caught_up: watch::channel(false).0,
            changes: tx,
            bad_records,
        });
        (store, rx)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The endpoint `id`, if it exists.
    pub fn get(&self, id: &str) -> Option<StoredEndpoint> {
        match self.table.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            Some(Entry::Live(s)) => Some(s.expand()),
            _ => None,
        }
    }

    /// Every endpoint, by id.
    pub fn list(&self) -> Vec<(String, StoredEndpoint)> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live(s) => Some((id.clone(), s.expand())),
                Entry::Deleted(_) => None,
            })
            .collect()
    }

    /// Every endpoint's id, in order: to go through a large store one
    /// endpoint at a time (100,000 expanded at once cost ~100 MB, and what
    /// is freed between what stays costs resident memory after).
    pub fn ids(&self) -> Vec<String> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Live(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many endpoints the store holds.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| matches!(e, Entry::Live(_)))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version `id` is at (0: never existed; a deleted endpoint keeps
    /// the version of its deletion).
    pub fn version(&self, id: &str) -> u64 {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map_or(0, Entry::version)
    }

    /// Whether the follower has read everything the topic held at start.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Resolves once the follower has caught up.
    pub async fn caught_up(&self) {
        let mut rx = self.caught_up.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Write `value` (None: delete) as the version after `expected`, and
    /// wait until this replica has read it back: `Ok` with the new version
    /// once it applied, [`WriteError::Conflict`] when another write came
    /// first. Returns only after Kafka acknowledged the record (acks=all).
    pub async fn write(
        &self,
        id: &str,
        expected: u64,
        value: Option<(serde_json::Map<String, serde_json::Value>, EndpointState)>,
    ) -> Result<u64, WriteError> {
        let version = expected + 1;
        let payload = value.map(|(endpoint, state)| {
            serde_json::to_vec(&StoredEndpoint {
                version,
                endpoint,
                state,
                updated_at: Some(transports::model::format_rfc3339_ms(
                    chrono::Utc::now().timestamp_millis(),
                )),
            })
            .expect("a JSON map serialises")
        });
        let version_text = version.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: VERSION_HEADER,
            value: Some(version_text.as_bytes()),
        });
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .key(id)
            .headers(headers);
        if let Some(p) = &payload {
            record = record.payload(p.as_slice());
        }
        let delivered = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| WriteError::Kafka(e))?;
        let (partition, offset) = (delivered.partition, delivered.offset);

        // Read back: the follower decides, as every other replica does.
        let wait = Duration::from_secs(10);
        let mut applied = self.applied.subscribe();
        let seen = tokio::time::timeout(
            wait,
            applied.wait_for(|a| a.get(&partition).is_some_and(|&next| next > offset)),
        )
        .await;
        if !matches!(seen, Ok(Ok(_))) {
            return Err(WriteError::NotReadBack(wait));
        }
        let outcome = self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|(at, _)| *at == (partition, offset))
            .map(|(_, o)| *o);
        match outcome {
            Some(Outcome::Applied) => Ok(version),
            Some(Outcome::Stale { current }) => Err(WriteError::Conflict { current }),
            // Our own record is never bad; an evicted outcome means a flood
            // of writes: report what the table says now.
            Some(Outcome::Bad) | None => match self.version(id) {
                v if v == version => Ok(version),
                current => Err(WriteError::Conflict { current }),
            },
        }
    }

    /// Apply one record read from the topic (the follower's job; in
    /// partition order). `version` is the header's, when present.
    fn apply(
        &self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        version: Option<u64>,
    ) {
        let outcome = self.decide(key, value, version);
        {
            let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            if outcomes.len() >= OUTCOMES_KEPT {
                outcomes.pop_front();
            }
            outcomes.push_back(((partition, offset), outcome));
        }
        self.applied.send_modify(|a| {
            a.insert(partition, offset + 1);
        });
    }

    fn decide(&self, key: Option<&[u8]>, value: Option<&[u8]>, version: Option<u64>) -> Outcome {
        let Some(id) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            return self.bad("a record without a UTF-8 key (the endpoint id)", None);
        };
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let current = table.get(id).map_or(0, Entry::version);
        match value {
            None => {
                if version.is_some_and(|v| v != current + 1) {
                    return Outcome::Stale { current };
                }
                let was_live = matches!(table.get(id), Some(Entry::Live(_)));
                let version = version.unwrap_or(current + 1);
                table.insert(id.to_owned(), Entry::Deleted(version));
                drop(table);
                if was_live && self.is_caught_up() {
                    let _ = self.changes.send(Change::Delete {
                        id: id.to_owned(),
                        version,
                    });
                }
                Outcome::Applied
            }
            Some(bytes) => {
                let stored = match Compact::read(id, bytes) {
                    Ok(s) => s,
                    Err(why) => {
                        drop(table);
                        return self.bad(&why, Some(id));
                    }
                };
                if version.is_some_and(|v| v != stored.version) {
                    drop(table);
                    return self.bad("its version header and its version differ", Some(id));
                }
                if stored.version != current + 1 {
                    return Outcome::Stale { current };
                }
                // Expanded only for whoever applies it: a record read while
                // catching up is not sent (see `Store::new`).
                let change = self.is_caught_up().then(|| stored.expand());
                table.insert(id.to_owned(), Entry::Live(stored));
                drop(table);
                if let Some(stored) = change {
                    let _ = self.changes.send(Change::Upsert {
                        id: id.to_owned(),
                        stored,
                    });
                }
                Outcome::Applied
            }
        }
    }

    fn bad(&self, why: &str, id: Option<&str>) -> Outcome {
        self.bad_records.inc();
        tracing::warn!(topic = %self.topic, endpoint = id.unwrap_or("?"), "skipping a bad record in the endpoints topic: {why}");
        Outcome::Bad
    }

    fn mark_caught_up(&self) {
        self.caught_up.send_if_modified(|c| {
            let changed = !*c;
            *c = true;
            changed
        });
    }
}

#[cfg(test)]
mod tests;
