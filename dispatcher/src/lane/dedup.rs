//! The cache of recently delivered ids, shared by all lanes: a re-read after
//! a restart or rebalance does not send again what this replica delivered.

use std::time::Duration;

use transports::DeliveryId;

/// Recently completed delivery ids.
///
/// Hashed with foldhash, not the standard SipHash: the cache is asked twice
/// per delivery, and in a profile of the `baseline` drain its lookups and
/// inserts, SipHash mostly, took about 7 % of the dispatcher's CPU. Keys
/// are delivery ids (UUID v5: SHA-1 of the event's id or the record's
/// position, and the endpoint), whose bits no producer chooses, and
/// foldhash is seeded per process.
pub type Dedup = moka::sync::Cache<DeliveryId, (), foldhash::fast::RandomState>;

/// A dedup cache of at most `max_entries` ids, each kept for `ttl`.
///
/// Evicts the id delivered longest ago (LRU by insertion: the lanes look
/// ids up with `contains_key`, which moka does not count as a use).
/// moka's default policy, TinyLFU, admits a new key only when it looks
/// more popular than the one it would evict; every delivery id is inserted
/// once, so once the cache was full it refused every new id and remembered
/// only the first `max_entries` it ever saw.
pub fn new(max_entries: u64, ttl: Duration) -> Dedup {
    moka::sync::Cache::builder()
        .max_capacity(max_entries)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .time_to_live(ttl)
        .build_with_hasher(foldhash::fast::RandomState::default())
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
            cache.insert(id(i), ());
            if i % 64 == 0 {
                cache.run_pending_tasks();
            }
        }
        cache.run_pending_tasks();
        let forgotten = (9_500..10_000)
            .filter(|&i| !cache.contains_key(&id(i)))
            .count();
        assert_eq!(
            forgotten, 0,
            "of the last 500 ids delivered, {forgotten} were forgotten"
        );
        assert!(
            cache.entry_count() <= 1_000,
            "{} entries",
            cache.entry_count()
        );
    }
}
