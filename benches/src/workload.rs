//! What the benchmarks send and route: seed records, the envelopes endpoints
//! receive, and a realistic mix of subscriptions.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use dispatcher::config::{FilterValue, Scalar};
use dispatcher::route::{EventPattern, Filter, Subscriber, Subscription, Tenant, TenantKey};
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

/// The tenant key of the tenant benchmarks: the seeds' WhatsApp account.
pub const TENANT_KEY: &str = "data.whatsapp_account_id";

/// Endpoints per tenant in [`tenant_subscribers`].
pub const ENDPOINTS_PER_TENANT: usize = 10;

/// Endpoints without a tenant in [`tenant_subscribers`]: the platform's
/// own consumers (analytics, audit), which take every tenant's events.
pub const UNTENANTED: usize = 20;

/// The name of tenant `i`.
pub fn tenant(i: usize) -> String {
    format!("waba-{i:06}")
}

pub fn tenant_key() -> TenantKey {
    TenantKey::parse(TENANT_KEY).expect("the benchmark tenant key is valid")
}

/// `n` endpoints of a multi-tenant platform: [`UNTENANTED`] without a
/// tenant, the rest [`ENDPOINTS_PER_TENANT`] to a tenant. Each subscribes
/// as in [`subscriptions`] (exact types, prefixes, `*`); one in five
/// filters on a field other than the tenant (`data.status`, `data.type`,
/// `data.total`), with an exact match or an operator. Lanes are positions.
/// Deterministic.
pub fn tenant_subscribers(n: usize) -> Vec<Subscriber> {
    let mut rng = SplitMix64(SEED ^ 0x7e4a);
    let tenants = (n.saturating_sub(UNTENANTED) / ENDPOINTS_PER_TENANT).max(1);
    let filters = [
        r#"{"data.status": ["delivered", "read"]}"#,
        r#"{"data.type": "text"}"#,
        r#"{"data.total": {"$gte": 1000}}"#,
        r#"{"data.status": {"$neq": "failed"}, "data.recipient_id": {"$prefix": "+9182"}}"#,
    ];
    subscriptions(n)
        .into_iter()
        .enumerate()
        .map(|(lane, mut subscription)| {
            subscription.filter = if rng.below(5) == 0 {
                let spec: BTreeMap<String, FilterValue> =
                    serde_json::from_str(filters[rng.below(filters.len())])
                        .expect("benchmark filters are JSON");
                Filter::parse(&spec).expect("benchmark filters are valid")
            } else {
                Filter::default()
            };
            let tenant = (lane >= UNTENANTED).then(|| {
                Tenant::new(&tenant(rng.below(tenants))).expect("benchmark tenants are valid")
            });
            Subscriber {
                lane,
                tenant,
                subscription,
            }
        })
        .collect()
}

/// Seed events of every type, each carrying the account of one of
/// `tenants` tenants in turn (added to types whose seeds have none).
pub fn tenant_events(count: usize, tenants: usize) -> anyhow::Result<Vec<Event>> {
    let mut seeds = SeedEvents::new(SEED);
    (0..count)
        .map(|i| {
            let event_type = EVENT_TYPES[i % EVENT_TYPES.len()];
            let mut data = seeds.data_of(event_type);
            if let Some(m) = data.as_object_mut() {
                m.insert(
                    "whatsapp_account_id".into(),
                    tenant((i * 7919) % tenants.max(1)).into(),
                );
            }
            let record = serde_json::json!({
                "event": event_type,
                "timestamp": "2026-05-16T12:00:00.000Z",
                "id": format!("evt-{i}"),
                "data": data,
            });
            decode(Bytes::from(serde_json::to_vec(&record)?), i as i64)
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
    fn tenant_mix_reaches_a_tenant_and_the_platform_only() {
        use dispatcher::route::{RouteTable, Router};
        use std::sync::Arc;
        let n = 10_000;
        let subscribers = tenant_subscribers(n);
        let tenant_of: Vec<Option<String>> = subscribers
            .iter()
            .map(|s| s.tenant.as_ref().map(|t| t.to_string()))
            .collect();
        let table = RouteTable::build(Some(tenant_key()), subscribers);
        let mut router = Router::from_table(Arc::new(table));
        let tenants = (n - UNTENANTED) / ENDPOINTS_PER_TENANT;
        for ev in tenant_events(48, tenants).unwrap() {
            let mut got = Vec::new();
            router.route(&ev, |i| got.push(i));
            let account = transports::json::find(ev.data(), &["whatsapp_account_id"])
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
            assert!(got.len() < 200, "{}: {}", ev.event_type(), got.len());
            for lane in got {
                let t = tenant_of[lane].as_deref();
                assert!(
                    t.is_none() || t == account.as_deref(),
                    "lane {lane} of {t:?}"
                );
            }
        }
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
