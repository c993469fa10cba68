//! Ordered delivery per key: an endpoint's `ordering:` option.
//!
//! An ordered endpoint gets the deliveries of one key (a field of the
//! event's `data`, such as `data.contact_id`, or the Kafka record's key)
//! one at a time, in the order
//! its lane took them: the next one of a key starts only once the one
//! before it is final (delivered, or dead-lettered). A delivery waiting for
//! a retry therefore holds back the later deliveries of its key, and only
//! of its key: other keys flow in parallel, up to the endpoint's in-flight
//! limit.
//!
//! The [`Sequencer`] owns that rule inside the lane. Each key with a
//! delivery under way (sent, waiting for a retry, or ready to go: the key's
//! *head*) has a chain of the deliveries that follow it, in order; the
//! heads themselves live where any delivery of the lane does (its ready
//! list, its retry waits, its sends), so the rest of the lane does not
//! change. When a head is final, the next of its chain becomes the head.
//!
//! What makes the order hold outside the lane is in `lane/mod.rs`: an
//! ordered lane never parks a delivery in a retry topic (its retries wait
//! in memory, however long, so a head's source record is not final and its
//! partition's commit stays behind it: a crash, a restart or a rebalance
//! reads the key's events again in the source's order), and it takes
//! returned deliveries (a spilled backlog) before fresh ones. The guarantee,
//! and where it ends, is written in `docs/architecture.md` (Ordered
//! delivery per key).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::Instant;

use serde::Deserialize;
use transports::kafka::KeyPath;
use transports::Event;

use super::Item;

/// `ordering:` of an endpoint, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderingConfig {
    /// Where the key is: `data.<field>[.<field>...]`, or `key` for the
    /// Kafka record's key.
    pub key: String,
    /// What becomes of the deliveries waiting behind a head that is
    /// dead-lettered after its retries (`expired` or `retries_exhausted`).
    #[serde(default)]
    pub on_expired: OnExpired,
}

/// `ordering.on_expired`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpired {
    /// The key moves on: the next delivery becomes its head.
    #[default]
    Skip,
    /// The deliveries queued behind it are dead-lettered too (reason
    /// `ordering_head_dead_lettered`): a receiver that must not see a later
    /// state without the earlier one gets none of them.
    DeadLetterRest,
}

/// An endpoint's ordering, checked: what its lane is made with.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOrdering {
    pub key: OrderKey,
    pub on_expired: OnExpired,
}

/// Where an ordered endpoint's key is (`ordering.key`), in the words
/// `routing.tenant_key` uses for the same two places.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderKey {
    /// `data.<field>...`: a field of the event's `data`.
    Data(KeyPath),
    /// `key`: the Kafka record's key, byte for byte. Producers that key
    /// their records by it put one key's events on one partition, so this
    /// is the key whose order the source topic itself keeps.
    Record,
}

impl KeyOrdering {
    /// The checked form of `config`; on error, why (for `ordering.key`).
    pub fn parse(config: &OrderingConfig) -> Result<KeyOrdering, String> {
        let key = match config.key.as_str() {
            "key" => OrderKey::Record,
            text if text.starts_with("data.") => OrderKey::Data(KeyPath::parse(text)?),
            text => {
                return Err(format!(
                    "`{text}` is not an ordering key (a field below data such as `data.contact_id`, or `key` for the Kafka record key)"
                ))
            }
        };
        Ok(KeyOrdering {
            key,
            on_expired: config.on_expired,
        })
    }
}

/// A delivery's key as the lane keeps it: a hash of the key's value, or
/// [`NO_KEY`] for an event without one (a missing or `null` field), which is
/// not ordered against anything. Two values with one hash are ordered
/// together, which costs them some parallelism and nothing else.
pub(super) type Key = u64;
pub(super) const NO_KEY: Key = 0;

/// One key's deliveries behind its head.
struct Chain {
    followers: VecDeque<Item>,
    /// Since when its head has waited for a retry (a blocked key).
    blocked_since: Option<Instant>,
}

/// The keys of one ordered lane that have a delivery under way.
pub(super) struct Sequencer {
    ordering: KeyOrdering,
    hasher: foldhash::fast::RandomState,
    chains: HashMap<Key, Chain, foldhash::fast::RandomState>,
    /// Deliveries in chains, behind their heads.
    held: usize,
    /// Keys whose head waits for a retry.
    blocked: usize,
    /// Where the lane's retry waits are in its delay queue: an ordered lane
    /// takes them all out when its endpoint is deleted or disabled.
    pub waits:
        std::collections::HashSet<tokio_util::time::delay_queue::Key, foldhash::fast::RandomState>,
    /// When the lane looks again for its longest blocked key, and how many
    /// were blocked when it last looked (see `Lane::blocked_metrics`).
    pub age_check: Option<Instant>,
    pub blocked_seen: usize,
}

impl Sequencer {
    pub fn new(ordering: KeyOrdering) -> Sequencer {
        Sequencer {
            ordering,
            hasher: foldhash::fast::RandomState::default(),
            chains: HashMap::default(),
            held: 0,
            blocked: 0,
            waits: Default::default(),
            age_check: None,
            blocked_seen: 0,
        }
    }

    pub fn ordering(&self) -> &KeyOrdering {
        &self.ordering
    }

    /// A new ordering for the keys from now on (the endpoint changed). The
    /// chains under way keep their order; a key under the new path queues
    /// behind one under the old only if their values hash alike.
    pub fn set_ordering(&mut self, ordering: KeyOrdering) {
        self.ordering = ordering;
    }

    /// The key of `event`.
    pub fn key_of(&self, event: &Event) -> Key {
        let value = match &self.ordering.key {
            OrderKey::Data(path) => path.extract(event.data()),
            // An empty key is no key, whoever built the event.
            OrderKey::Record => event
                .record_key
                .as_deref()
                .filter(|k| !k.is_empty())
                .map(Cow::Borrowed),
        };
        match value {
            // Never NO_KEY: that one means "not ordered".
            Some(value) => self.hasher.hash_one(value.as_ref()).max(1),
            None => NO_KEY,
        }
    }

    /// A delivery the lane takes: it goes on at once when its key has
    /// nothing under way (it becomes the key's head), else it waits in its
    /// key's chain (`None`).
    pub fn admit(&mut self, item: Item) -> Option<Item> {
        if item.key == NO_KEY {
            return Some(item);
        }
        match self.chains.get_mut(&item.key) {
            Some(chain) => {
                chain.followers.push_back(item);
                self.held += 1;
                None
            }
            None => {
                self.chains.insert(
                    item.key,
                    Chain {
                        followers: VecDeque::new(),
                        blocked_since: None,
                    },
                );
                Some(item)
            }
        }
    }

    /// The head of `key` is final: the next delivery of its chain, which
    /// becomes its head, if there is one.
    pub fn settle(&mut self, key: Key) -> Option<Item> {
        if key == NO_KEY {
            return None;
        }
        let chain = self.chains.get_mut(&key)?;
        if chain.blocked_since.take().is_some() {
            self.blocked -= 1;
        }
        match chain.followers.pop_front() {
            Some(next) => {
                self.held -= 1;
                Some(next)
            }
            None => {
                self.chains.remove(&key);
                None
            }
        }
    }

    /// The head of `key` waits for a retry: its key is blocked (from the
    /// first such wait until the head is final).
    pub fn block(&mut self, key: Key, now: Instant) {
        if let Some(chain) = self.chains.get_mut(&key) {
            if chain.blocked_since.is_none() {
                chain.blocked_since = Some(now);
                self.blocked += 1;
            }
        }
    }

    /// The deliveries waiting behind the head of `key`, taken out of its
    /// chain (the head is dead-lettered and `on_expired` says they go too).
    pub fn take_followers(&mut self, key: Key) -> VecDeque<Item> {
        match self.chains.get_mut(&key) {
            Some(chain) => {
                let rest = std::mem::take(&mut chain.followers);
                self.held -= rest.len();
                rest
            }
            None => VecDeque::new(),
        }
    }

    /// Every chain taken out (the lane lets go of them at shutdown).
    pub fn take_all(&mut self) -> Vec<Item> {
        self.held = 0;
        self.blocked = 0;
        self.chains.drain().flat_map(|(_, c)| c.followers).collect()
    }

    /// Every delivery held in a chain, in each key's order: the endpoint
    /// is no longer ordered.
    pub fn into_followers(self) -> impl Iterator<Item = Item> {
        self.chains.into_values().flat_map(|c| c.followers)
    }

    /// Deliveries held behind their heads.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Keys whose head waits for a retry.
    pub fn blocked(&self) -> usize {
        self.blocked
    }

    /// When the key blocked longest started waiting. A walk over the keys
    /// under way: the lane asks at most once a second, and only while some
    /// key is blocked.
    pub fn oldest_blocked(&self) -> Option<Instant> {
        if self.blocked == 0 {
            return None;
        }
        self.chains.values().filter_map(|c| c.blocked_since).min()
    }
}

/// How many deliveries an ordered lane keeps in memory behind their heads
/// or waiting for a retry before it takes no more from its inbox (which
/// then fills, and spills, as any lane's does).
pub(super) fn room(max_in_flight: usize) -> usize {
    (max_in_flight * 4).max(256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::{Budget, HoldIndex, OffsetTracker, Ticket};
    use crate::park::RetryState;
    use bytes::Bytes;
    use std::sync::Arc;
    use transports::{DeliveryId, SourceRef};

    fn event(contact: Option<&str>, offset: i64) -> Arc<Event> {
        let data = match contact {
            Some(c) => format!(r#"{{"contact_id":"{c}"}}"#),
            None => "{}".to_owned(),
        };
        let raw = format!(r#"{{"event":"message.sent","data":{data}}}"#);
        let source = SourceRef {
            topic: "events".into(),
            partition: 0,
            offset,
        };
        Arc::new(Event::decode(raw.into(), source, Some(0), 1 << 20).unwrap())
    }

    fn sequencer() -> Sequencer {
        Sequencer::new(
            KeyOrdering::parse(&OrderingConfig {
                key: "data.contact_id".into(),
                on_expired: OnExpired::Skip,
            })
            .unwrap(),
        )
    }

    fn item(s: &Sequencer, contact: Option<&str>, offset: i64) -> Item {
        let event = event(contact, offset);
        let (holds, _rx) = HoldIndex::new();
        let t = OffsetTracker::new(Arc::new(Budget::new(1_000_000, 1 << 30)), holds);
        t.assign([("events", 0)]);
        let p = t.partition("events", 0).unwrap();
        Item {
            key: s.key_of(&event),
            id: DeliveryId::derive(&event, "ep"),
            ticket: Ticket::issue(p, offset, 1, event.payload().len()),
            event,
            state: RetryState::default(),
        }
    }

    fn offset(item: &Item) -> i64 {
        item.event.source.offset
    }

    #[test]
    fn a_key_has_one_delivery_under_way_and_the_rest_follow_in_order() {
        let mut s = sequencer();
        let a1 = s.admit(item(&s, Some("a"), 1)).expect("first of a goes on");
        assert!(s.admit(item(&s, Some("a"), 2)).is_none());
        let b1 = s
            .admit(item(&s, Some("b"), 3))
            .expect("b does not wait on a");
        assert!(s.admit(item(&s, Some("a"), 4)).is_none());
        assert_eq!(s.held(), 2);

        assert!(s.settle(b1.key).is_none(), "b had nothing behind it");
        let a2 = s.settle(a1.key).expect("a's next");
        assert_eq!(offset(&a2), 2);
        let a4 = s.settle(a2.key).expect("a's next");
        assert_eq!(offset(&a4), 4);
        assert!(s.settle(a4.key).is_none());
        assert_eq!(s.held(), 0);
        // The key is free again: its next delivery goes on at once.
        assert!(s.admit(item(&s, Some("a"), 5)).is_some());
    }

    #[test]
    fn events_without_the_key_are_not_ordered() {
        let mut s = sequencer();
        assert!(s.admit(item(&s, None, 1)).is_some());
        assert!(s.admit(item(&s, None, 2)).is_some());
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_blocked_key_is_counted_until_its_head_is_final() {
        let mut s = sequencer();
        let a1 = s.admit(item(&s, Some("a"), 1)).unwrap();
        assert!(s.admit(item(&s, Some("a"), 2)).is_none());
        let t0 = Instant::now();
        s.block(a1.key, t0);
        s.block(a1.key, t0 + std::time::Duration::from_secs(1));
        assert_eq!(s.blocked(), 1);
        assert_eq!(s.oldest_blocked(), Some(t0), "the first wait counts");
        let a2 = s.settle(a1.key).unwrap();
        assert_eq!(s.blocked(), 0, "its follower is a fresh head");
        assert_eq!(s.oldest_blocked(), None);
        assert!(s.settle(a2.key).is_none());
    }

    #[test]
    fn followers_can_be_taken_out_of_a_key() {
        let mut s = sequencer();
        let a1 = s.admit(item(&s, Some("a"), 1)).unwrap();
        assert!(s.admit(item(&s, Some("a"), 2)).is_none());
        assert!(s.admit(item(&s, Some("a"), 3)).is_none());
        let rest: Vec<i64> = s.take_followers(a1.key).iter().map(offset).collect();
        assert_eq!(rest, [2, 3]);
        assert_eq!(s.held(), 0);
        assert!(s.settle(a1.key).is_none());
    }

    #[test]
    fn taking_every_chain_frees_every_key() {
        let mut s = sequencer();
        let a1 = s.admit(item(&s, Some("a"), 1)).unwrap();
        assert!(s.admit(item(&s, Some("a"), 2)).is_none());
        assert!(s.admit(item(&s, Some("b"), 3)).is_some());
        assert!(s.admit(item(&s, Some("b"), 4)).is_none());
        s.block(a1.key, Instant::now());
        let mut all: Vec<i64> = s.take_all().iter().map(offset).collect();
        all.sort();
        assert_eq!(all, [2, 4]);
        assert_eq!((s.held(), s.blocked()), (0, 0));
        assert!(s.admit(item(&s, Some("a"), 5)).is_some(), "a is free");
        assert!(s.admit(item(&s, Some("b"), 6)).is_some(), "b is free");
    }

    #[test]
    fn the_record_key_can_be_the_key() {
        let s = Sequencer::new(
            KeyOrdering::parse(&OrderingConfig {
                key: "key".into(),
                on_expired: OnExpired::Skip,
            })
            .unwrap(),
        );
        let keyed = |key: Option<&'static [u8]>, contact: &str| {
            let mut e = (*event(Some(contact), 0)).clone();
            e.record_key = key.map(Bytes::from_static);
            e
        };
        // The record key decides, not data: same key, different contacts.
        assert_eq!(
            s.key_of(&keyed(Some(b"k1"), "a")),
            s.key_of(&keyed(Some(b"k1"), "b"))
        );
        assert_ne!(
            s.key_of(&keyed(Some(b"k1"), "a")),
            s.key_of(&keyed(Some(b"k2"), "a"))
        );
        // Binary keys are keys.
        assert_ne!(s.key_of(&keyed(Some(&[0xff, 0x00]), "a")), NO_KEY);
        assert_eq!(s.key_of(&keyed(None, "a")), NO_KEY, "no key, not ordered");
    }

    #[test]
    fn numbers_and_nested_fields_are_keys_too() {
        let s = Sequencer::new(
            KeyOrdering::parse(&OrderingConfig {
                key: "data.n".into(),
                on_expired: OnExpired::DeadLetterRest,
            })
            .unwrap(),
        );
        let mk = |data: &str| {
            let raw = format!(r#"{{"event":"x","data":{data}}}"#);
            let source = SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            };
            Event::decode(raw.into(), source, Some(0), 1 << 20).unwrap()
        };
        assert_ne!(s.key_of(&mk(r#"{"n":7}"#)), NO_KEY);
        assert_eq!(s.key_of(&mk(r#"{"n":7}"#)), s.key_of(&mk(r#"{"n": 7}"#)));
        assert_ne!(s.key_of(&mk(r#"{"n":7}"#)), s.key_of(&mk(r#"{"n":8}"#)));
        assert_eq!(s.key_of(&mk(r#"{"n":null}"#)), NO_KEY);
        assert!(KeyOrdering::parse(&OrderingConfig {
            key: "contact_id".into(),
            on_expired: OnExpired::Skip
        })
        .is_err());
    }
}
