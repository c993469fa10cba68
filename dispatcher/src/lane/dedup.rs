//! The cache of recently delivered ids, shared by all lanes: a re-read after
//! a restart or rebalance does not send again what this replica delivered.
//!
//! Every successful delivery is inserted once and every delivery is looked
//! up once, so the cache sits on the hot path twice per delivery. What it
//! must do is narrow: remember the last `max_entries` ids, in the order
//! they were delivered, each for at most `ttl`. That is a bounded map in
//! insertion order (`lru::LruCache`, only ever read with `peek`/`contains`,
//! so nothing is promoted), split into shards behind plain mutexes so that
//! lanes on different threads rarely meet.
//!
//! It was a moka cache. In a profile of the `fanout-vs-bare` drain, moka's
//! insert (its concurrent table, with the write log and maintenance behind
//! every insert) and lookup took about 10 % of the dispatcher's CPU, some
//! 3 µs per delivery, for features this cache does not use: admission,
//! per-entry expiry timers and lock-free reads. See docs/benchmarks.md.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;
use transports::DeliveryId;

/// Shards of the cache: a power of two, so a shard is a mask of the hash.
const SHARDS: usize = 16;

/// Recently completed delivery ids. Cheap to clone: clones share the cache.
///
/// Hashed with foldhash, not the standard SipHash: keys are delivery ids
/// (UUID v5: SHA-1 of the event's id or the record's position, and the
/// endpoint), whose bits no producer chooses, and foldhash is seeded per
/// process.
#[derive(Clone)]
pub struct Dedup {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    ttl: Duration,
}

/// Ids with the instant each was delivered, oldest first.
type Shard = LruCache<DeliveryId, Instant, foldhash::fast::RandomState>;

/// A dedup cache of at most `max_entries` ids, each kept for `ttl`.
pub fn new(max_entries: u64, ttl: Duration) -> Dedup {
    let max = usize::try_from(max_entries).unwrap_or(usize::MAX);
    // Rounded up: the cache holds at least `max_entries`, and at most
    // SHARDS - 1 more.
    let per_shard = NonZeroUsize::new(max.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
    let hasher = foldhash::fast::RandomState::default();
    let shards = (0..SHARDS)
        .map(|_| Mutex::new(LruCache::with_hasher(per_shard, hasher.clone())))
        .collect();
    Dedup {
        inner: Arc::new(Inner {
            shards,
            hasher,
            ttl,
        }),
    }
}

impl Dedup {
    fn shard(&self, id: &DeliveryId) -> std::sync::MutexGuard<'_, Shard> {
        use std::hash::BuildHasher;
        // Bits 32..36 of the hash: each shard's table indexes its buckets
        // by the low bits and tags them with the top seven, so a shard
        // chosen by either would leave all its keys sharing those bits
        // (clustered buckets, or tags that tell keys apart less often).
        let i = (self.inner.hasher.hash_one(id) >> 32) as usize & (SHARDS - 1);
        // A panic while holding a shard leaves a consistent map: every
        // operation below is a single call into it.
        self.inner.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `id` was delivered within the last `ttl` and is still held.
    pub fn contains(&self, id: &DeliveryId) -> bool {
        self.shard(id)
            .peek(id)
            .is_some_and(|at| at.elapsed() < self.inner.ttl)
    }

    /// `id` was delivered now. When the cache is full, the id delivered
    /// longest ago makes room; ids older than `ttl` go first.
    pub fn insert(&self, id: DeliveryId) {
        let now = Instant::now();
        let mut shard = self.shard(&id);
        // Expired ids leave as new ones come, so an idle-then-quiet replica
        // does not hold a full cache of ids nobody will look up.
        while shard
            .peek_lru()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= self.inner.ttl)
        {
            shard.pop_lru();
        }
        // A re-delivered id moves to the newest end: it was delivered again.
        shard.push(id, now);
    }

    /// Ids held, expired ones not yet dropped included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> DeliveryId {
        DeliveryId::parse(&format!("00000000-0000-5000-8000-{i:012x}")).expect("a valid uuid")
    }

    /// A re-read comes soon after the delivery (a rebalance, a restart's
    /// replay from the last commit): the ids delivered last are the ones
    /// that must be remembered, however many came before.
    #[test]
    fn a_full_cache_remembers_the_ids_delivered_last() {
        let cache = new(1_000, Duration::from_secs(3600));
        for i in 0..10_000 {
            cache.insert(id(i));
        }
        let forgotten = (9_500..10_000).filter(|&i| !cache.contains(&id(i))).count();
        assert_eq!(
            forgotten, 0,
            "of the last 500 ids delivered, {forgotten} were forgotten"
        );
        // At most SHARDS - 1 over, from rounding each shard's share up.
        assert!(cache.len() < 1_000 + SHARDS, "{} entries", cache.len());
        let remembered_early = (0..5_000).filter(|&i| cache.contains(&id(i))).count();
        assert_eq!(remembered_early, 0, "ids delivered long ago were kept");
    }

    #[test]
    fn an_id_older_than_the_ttl_is_not_a_duplicate_and_makes_room() {
        let cache = new(1_000, Duration::from_millis(300));
        cache.insert(id(1));
        assert!(cache.contains(&id(1)));
        std::thread::sleep(Duration::from_millis(350));
        assert!(!cache.contains(&id(1)), "an expired id still counted");
        // Inserts drop the expired ids of their shard: enough of them reach
        // every shard.
        for i in 2..200 {
            cache.insert(id(i));
        }
        assert_eq!(cache.len(), 198, "the expired id is still held");
    }

    #[test]
    fn clones_share_the_cache() {
        let cache = new(100, Duration::from_secs(60));
        let other = cache.clone();
        other.insert(id(7));
        assert!(cache.contains(&id(7)));
        assert!(!cache.contains(&id(8)));
    }
}
