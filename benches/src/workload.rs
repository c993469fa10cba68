//! What the benchmarks send and route: seed records, the envelopes endpoints
//! receive, and a realistic mix of subscriptions.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use dispatcher::config::{FilterValue, Scalar};
use dispatcher::route::{EventPattern, Filter, Subscription};
use dispatcher::seed::{SeedEvents, ACCOUNTS, EVENT_TYPES};
use transports::{Event, SourceRef};

/// The Standard Webhooks example secret: signing is on in every benchmark.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Seed of the generated events, so that runs compare like with like.
pub const SEED: u64 = 0xbe9c;

/// The largest record the benchmarks accept (the dispatcher's default).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// One source record: the producer's event id (used as key) and its value.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: Bytes,
}

/// `n` seed records cycling through every documented event type.
pub fn records(n: usize) -> Vec<Record> {
    let mut seeds = SeedEvents::new(SEED);
    let now = now_ms();
    (0..n)
        .map(|_| {
            let (_, key, value) = seeds.next_event(now);
            Record {
                key,
                value: Bytes::from(value),
            }
        })
        .collect()
}

/// One seed record of `event_type`, decoded.
pub fn sample_event(event_type: &str) -> anyhow::Result<Event> {
    let (_, value) = SeedEvents::new(SEED).event(event_type, now_ms());
    decode(Bytes::from(value), 0)
}

/// Decode a record as the dispatcher's source does (topic `bench`, partition 0).
pub fn decode(value: Bytes, offset: i64) -> anyhow::Result<Event> {
    Event::decode(value, source_ref(offset), None, MAX_EVENT_BYTES)
        .with_context(|| format!("decoding seed record at offset {offset}"))
}

/// Where a benchmark's record claims to come from.
pub fn source_ref(offset: i64) -> SourceRef {
    SourceRef {
        topic: "bench".into(),
        partition: 0,
        offset,
    }
}

/// The envelope every endpoint receives for every record, record-major:
/// body `i` is record `i / endpoints.len()` for endpoint `i % endpoints.len()`.
pub fn envelopes(records: &[Record], endpoint_ids: &[String]) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(records.len() * endpoint_ids.len());
    for (offset, record) in (0i64..).zip(records) {
        let event = decode(record.value.clone(), offset)?;
        out.extend(endpoint_ids.iter().map(|id| event.envelope(id)));
    }
    Ok(out)
}

/// `n` subscriptions in a mix resembling a multi-tenant deployment:
/// about half list exact event types, a quarter use a prefix, one in ten
/// takes everything, the rest mix an exact type with a prefix; one in five
/// also filters on `data.whatsapp_account_id`. Deterministic.
pub fn subscriptions(n: usize) -> Vec<Subscription> {
    const PREFIXES: &[&str] = &["message.*", "contact.*", "conversation.*", "campaign.*"];
    let mut rng = SplitMix64(SEED);
    (0..n)
        .map(|_| {
            let pick = |rng: &mut SplitMix64, from: &[&'static str]| from[rng.below(from.len())];
            let patterns: Vec<&str> = match rng.below(20) {
                0..=9 => {
                    let count = 1 + rng.below(3);
                    (0..count).map(|_| pick(&mut rng, EVENT_TYPES)).collect()
                }
                10..=14 => vec![pick(&mut rng, PREFIXES)],
                15..=16 => vec!["*"],
                _ => vec![pick(&mut rng, EVENT_TYPES), pick(&mut rng, PREFIXES)],
            };
            let mut filter = BTreeMap::new();
            if rng.below(5) == 0 {
                let value = if rng.below(2) == 0 {
                    FilterValue::One(Scalar(pick(&mut rng, ACCOUNTS).to_owned()))
                } else {
                    FilterValue::AnyOf(
                        ACCOUNTS[..2]
                            .iter()
                            .map(|a| Scalar((*a).to_owned()))
                            .collect(),
                    )
                };
                filter.insert("data.whatsapp_account_id".to_owned(), value);
            }
            Subscription {
                patterns: patterns
                    .into_iter()
                    .map(|p| EventPattern::parse(p).expect("benchmark patterns are valid"))
                    .collect(),
                filter: Filter::parse(&filter).expect("benchmark filters are valid"),
            }
        })
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A tiny deterministic generator (SplitMix64), enough to shuffle a mix.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough below `n` (n is tiny here, so the modulo bias is nil).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher::route::Router;

    #[test]
    fn envelopes_are_record_major() {
        let recs = records(3);
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let bodies = envelopes(&recs, &ids).unwrap();
        assert_eq!(bodies.len(), 6);
        let v: serde_json::Value = serde_json::from_slice(&bodies[3]).unwrap();
        assert_eq!(v["webhook_id"], "b");
        assert_eq!(v["event"], EVENT_TYPES[1]);
    }

    #[test]
    fn subscription_mix_routes_every_type() {
        let mut router = Router::new(subscriptions(1_000));
        for ty in EVENT_TYPES {
            let ev = sample_event(ty).unwrap();
            let n = router.route(&ev, |_| {});
            assert!(n > 0 && n < 1_000, "{ty}: {n}");
        }
    }
}
