//! The delivery ledger: which deliveries a run must see, and what became of
//! each, keyed by delivery id.
//!
//! The producer side registers every delivery an event must cause (its
//! endpoint and stable delivery id) before the event is written; the sink
//! records each accepted request under the delivery id it carried; the
//! dead-letter watcher records the ids the dispatcher dead-lettered. From
//! those three the ledger answers, at any time and in O(1), how many
//! deliveries are still open, and at the end, per endpoint:
//!
//! - *delivered*: expected and accepted at least once;
//! - *duplicates*: acceptances beyond the first of the same id;
//! - *dead-lettered*: expected, never accepted, but in the dead-letter topic
//!   (a final outcome the dispatcher owns up to);
//! - *lost*: expected, never accepted and never dead-lettered;
//! - *unexpected*: accepted under an id nothing registered. Delivery ids are
//!   stable per (event, endpoint), so a redelivery under a new id shows up
//!   here, and so does a delivery to the wrong endpoint;
//! - *misrouted*: a registered id accepted by another endpoint's receiver.
//!
//! Memory is bounded: at most `capacity` ids are tracked; past that, new ids
//! are counted as overflow and the report says the accounting is partial.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use transports::DeliveryId;

/// What the ledger knows of one delivery id.
#[derive(Debug, Clone, Copy)]
struct Slot {
    endpoint: u16,
    /// Times a receiver accepted it (saturating).
    accepted: u16,
    expected: bool,
    dead: bool,
    misrouted: bool,
}

impl Slot {
    fn is_final(&self) -> bool {
        self.accepted > 0 || self.dead
    }
}

/// How an accepted request relates to what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The first acceptance of an expected id.
    First,
    /// An id accepted before.
    Duplicate,
    /// An id nothing registered (yet).
    Unexpected,
    /// The ledger is full; not tracked.
    Overflow,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<DeliveryId, Slot>,
    /// Expected ids.
    expected: u64,
    /// Expected ids that are final (accepted or dead-lettered).
    settled: u64,
    /// The same two per endpoint (index), for waits on some endpoints only.
    expected_by: Vec<u64>,
    settled_by: Vec<u64>,
    overflow: u64,
}

/// Add `by` (0 or 1) to endpoint `e`'s counter, ignoring unknown endpoints.
fn bump(counts: &mut [u64], e: u16, by: u64) {
    if let Some(c) = counts.get_mut(usize::from(e)) {
        *c += by;
    }
}

fn unbump(counts: &mut [u64], e: u16, by: u64) {
    if let Some(c) = counts.get_mut(usize::from(e)) {
        *c = c.saturating_sub(by);
    }
}

/// Shared between the producer, the sink and the dead-letter watcher.
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<Inner>,
    capacity: usize,
    endpoints: usize,
}

/// Per-endpoint outcome of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub expected: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// Accepted by the receiver *and* dead-lettered: the dispatcher gave up
    /// on an attempt the receiver had in fact taken (a late answer).
    pub delivered_and_dead_lettered: u64,
    pub lost: u64,
    pub unexpected: u64,
    pub misrouted: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.dead_lettered += o.dead_lettered;
        self.delivered_and_dead_lettered += o.delivered_and_dead_lettered;
        self.lost += o.lost;
        self.unexpected += o.unexpected;
        self.misrouted += o.misrouted;
    }
}

/// The whole ledger's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: Tally,
    pub endpoints: Vec<Tally>,
    /// Ids neither tracked nor counted because the ledger was full.
    pub overflow: u64,
    /// Dead letters for ids nothing registered.
    pub unexpected_dead_letters: u64,
}

impl Ledger {
    /// A ledger for `endpoints` endpoints tracking at most `capacity` ids.
    pub fn new(endpoints: usize, capacity: usize) -> Ledger {
        Ledger {
            inner: Mutex::new(Inner {
                expected_by: vec![0; endpoints],
                settled_by: vec![0; endpoints],
                ..Inner::default()
            }),
            capacity,
            endpoints,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not hide the run's accounting.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a delivery that must happen. Registering the same id twice
    /// counts once. Returns false when the ledger is full.
    pub fn expect(&self, id: DeliveryId, endpoint: usize) -> bool {
        let mut inner = self.lock();
        let full = inner.slots.len() >= self.capacity;
        let Inner {
            slots,
            expected,
            settled,
            expected_by,
            settled_by,
            overflow,
        } = &mut *inner;
        match slots.get_mut(&id) {
            Some(slot) if slot.expected => true,
            Some(slot) => {
                // Accepted (or dead-lettered) before it was registered.
                slot.expected = true;
                slot.misrouted = usize::from(slot.endpoint) != endpoint && slot.accepted > 0;
                slot.endpoint = endpoint as u16;
                *expected += 1;
                *settled += u64::from(slot.is_final());
                bump(expected_by, slot.endpoint, 1);
                bump(settled_by, slot.endpoint, u64::from(slot.is_final()));
                true
            }
            None if full => {
                *overflow += 1;
                false
            }
            None => {
                slots.insert(
                    id,
                    Slot {
                        endpoint: endpoint as u16,
                        accepted: 0,
                        expected: true,
                        dead: false,
                        misrouted: false,
                    },
                );
                *expected += 1;
                bump(expected_by, endpoint as u16, 1);
                true
            }
        }
    }

    /// Take back a registration (the producer could not write the event).
    pub fn withdraw(&self, id: DeliveryId) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get(&id).copied() {
            if slot.expected {
                inner.expected -= 1;
                inner.settled -= u64::from(slot.is_final());
                unbump(&mut inner.expected_by, slot.endpoint, 1);
                unbump(
                    &mut inner.settled_by,
                    slot.endpoint,
                    u64::from(slot.is_final()),
                );
                if slot.is_final() {
                    if let Some(s) = inner.slots.get_mut(&id) {
                        s.expected = false;
                    }
                } else {
                    inner.slots.remove(&id);
                }
            }
        }
    }

    /// A receiver of `endpoint` accepted a request carrying `id`.
    pub fn accepted(&self, id: DeliveryId, endpoint: usize) -> Receipt {
        let mut inner = self.lock();
        let full = inner.slots.len() >= self.capacity;
        let Inner {
            slots,
            settled,
            settled_by,
            overflow,
            ..
        } = &mut *inner;
        match slots.get_mut(&id) {
            Some(slot) => {
                if usize::from(slot.endpoint) != endpoint {
                    slot.misrouted = true;
                }
                let first = slot.accepted == 0;
                if first && slot.expected && !slot.dead {
                    *settled += 1;
                    bump(settled_by, slot.endpoint, 1);
                }
                slot.accepted = slot.accepted.saturating_add(1);
                match (first, slot.expected) {
                    (false, _) => Receipt::Duplicate,
                    (true, true) => Receipt::First,
                    (true, false) => Receipt::Unexpected,
                }
            }
            None if full => {
                *overflow += 1;
                Receipt::Overflow
            }
            None => {
                slots.insert(
                    id,
                    Slot {
                        endpoint: endpoint as u16,
                        accepted: 1,
                        expected: false,
                        dead: false,
                        misrouted: false,
                    },
                );
                Receipt::Unexpected
            }
        }
    }

    /// The dispatcher dead-lettered `id`.
    pub fn dead_lettered(&self, id: DeliveryId) {
        let mut inner = self.lock();
        let full = inner.slots.len() >= self.capacity;
        let Inner {
            slots,
            settled,
            settled_by,
            overflow,
            ..
        } = &mut *inner;
        match slots.get_mut(&id) {
            Some(slot) => {
                if !slot.dead && slot.accepted == 0 && slot.expected {
                    *settled += 1;
                    bump(settled_by, slot.endpoint, 1);
                }
                slot.dead = true;
            }
            None if full => *overflow += 1,
            None => {
                // The endpoint is unknown until (if ever) it is registered.
                slots.insert(
                    id,
                    Slot {
                        endpoint: u16::MAX,
                        accepted: 0,
                        expected: false,
                        dead: true,
                        misrouted: false,
                    },
                );
            }
        }
    }

    /// (expected, settled): the run is complete when they are equal.
    pub fn progress(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.expected, inner.settled)
    }

    /// (expected, settled) over the endpoints for which `which(index)` is
    /// true.
    pub fn progress_of(&self, which: impl Fn(usize) -> bool) -> (u64, u64) {
        let inner = self.lock();
        (0..self.endpoints)
            .filter(|&i| which(i))
            .fold((0, 0), |(e, s), i| {
                (e + inner.expected_by[i], s + inner.settled_by[i])
            })
    }

    /// Count everything. Walks every id: call it at the end, not per request.
    pub fn summary(&self) -> Summary {
        let inner = self.lock();
        let mut endpoints = vec![Tally::default(); self.endpoints];
        let mut unexpected_dead_letters = 0;
        for slot in inner.slots.values() {
            let Some(t) = endpoints.get_mut(usize::from(slot.endpoint)) else {
                // Dead letters nothing registered.
                unexpected_dead_letters += u64::from(slot.dead);
                continue;
            };
            if slot.expected {
                t.expected += 1;
                match (slot.accepted > 0, slot.dead) {
                    (true, false) => t.delivered += 1,
                    (true, true) => {
                        t.delivered += 1;
                        t.delivered_and_dead_lettered += 1;
                    }
                    (false, true) => t.dead_lettered += 1,
                    (false, false) => t.lost += 1,
                }
            } else if slot.accepted > 0 {
                t.unexpected += 1;
            } else if slot.dead {
                unexpected_dead_letters += 1;
            }
            t.duplicates += u64::from(slot.accepted.saturating_sub(1));
            t.misrouted += u64::from(slot.misrouted);
        }
        let mut total = Tally::default();
        for t in &endpoints {
            total.add(t);
        }
        Summary {
            total,
            endpoints,
            overflow: inner.overflow,
            unexpected_dead_letters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeliveryId {
        DeliveryId::parse(&format!("00000000-0000-0000-0000-0000000000{n:02x}")).unwrap()
    }

    #[test]
    fn counts_losses_duplicates_and_dead_letters() {
        let l = Ledger::new(2, 100);
        for n in 0..6 {
            assert!(l.expect(id(n), usize::from(n % 2)));
        }
        assert_eq!(l.accepted(id(0), 0), Receipt::First);
        assert_eq!(l.accepted(id(0), 0), Receipt::Duplicate);
        assert_eq!(l.accepted(id(1), 1), Receipt::First);
        l.dead_lettered(id(2));
        l.dead_lettered(id(3));
        assert_eq!(l.accepted(id(3), 1), Receipt::First); // late answer
        assert_eq!(l.accepted(id(9), 0), Receipt::Unexpected);
        assert_eq!(l.accepted(id(4), 1), Receipt::First); // wrong endpoint
        assert_eq!(l.progress(), (6, 5));
        assert_eq!(l.progress_of(|i| i == 0), (3, 3));
        assert_eq!(l.progress_of(|i| i == 1), (3, 2));
        assert_eq!(l.progress_of(|_| true), l.progress());

        let s = l.summary();
        assert_eq!(
            s.endpoints[0],
            Tally {
                expected: 3,
                delivered: 2,
                duplicates: 1,
                dead_lettered: 1,
                unexpected: 1,
                misrouted: 1,
                ..Tally::default()
            }
        );
        assert_eq!(
            s.endpoints[1],
            Tally {
                expected: 3,
                delivered: 2,
                delivered_and_dead_lettered: 1,
                lost: 1,
                ..Tally::default()
            }
        );
        assert_eq!(s.total.lost, 1);
        assert_eq!(s.total.expected, 6);
    }

    #[test]
    fn acceptance_before_registration_settles_on_registration() {
        let l = Ledger::new(1, 10);
        assert_eq!(l.accepted(id(1), 0), Receipt::Unexpected);
        l.dead_lettered(id(2));
        l.expect(id(1), 0);
        l.expect(id(2), 0);
        l.expect(id(2), 0); // twice counts once
        assert_eq!(l.progress(), (2, 2));
        let s = l.summary();
        assert_eq!(s.total.delivered, 1);
        assert_eq!(s.total.dead_lettered, 1);
        assert_eq!(s.total.unexpected, 0);
    }

    #[test]
    fn withdrawn_registrations_are_not_losses() {
        let l = Ledger::new(1, 10);
        l.expect(id(1), 0);
        l.expect(id(2), 0);
        l.withdraw(id(1));
        assert_eq!(l.progress(), (1, 0));
        assert_eq!(l.summary().total.lost, 1);
    }

    #[test]
    fn capacity_bounds_memory() {
        let l = Ledger::new(1, 2);
        assert!(l.expect(id(1), 0));
        assert!(l.expect(id(2), 0));
        assert!(!l.expect(id(3), 0));
        assert_eq!(l.accepted(id(4), 0), Receipt::Overflow);
        assert_eq!(l.accepted(id(1), 0), Receipt::First);
        assert_eq!(l.summary().overflow, 2);
    }
}
