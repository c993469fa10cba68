//! The indexed router against the linear one, and tenants at scale.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use transports::seed::{SeedEvents, EVENT_TYPES};
use transports::{Event, SourceRef};

use super::*;
use crate::config::FilterValue;

fn decode(event_type: &str, data: &str) -> Event {
    let raw = format!(r#"{{"event":"{event_type}","id":"e","data":{data}}}"#);
    let src = SourceRef {
        topic: "t".into(),
        partition: 0,
        offset: 0,
    };
    Event::decode(Bytes::from(raw), src, Some(0), 1 << 20).expect("test events decode")
}

fn filter(json: &str) -> Filter {
    let spec: BTreeMap<String, FilterValue> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    Filter::parse(&spec).unwrap_or_else(|e| panic!("{json}: {e:?}"))
}

/// Conditions on the seeds' fields, each alone or combined below.
const CONDITIONS: &[&str] = &[
    r#""data.whatsapp_account_id": "acct-1""#,
    r#""data.whatsapp_account_id": ["acct-2", "acct-3"]"#,
    r#""data.whatsapp_account_id": {"$in": ["acct-1", "t-7"]}"#,
    r#""data.whatsapp_account_id": {"$neq": "acct-2"}"#,
    r#""data.whatsapp_account_id": {"$exists": false}"#,
    r#""data.status": {"$in": ["sent", "delivered", "read"]}"#,
    r#""data.status": {"$eq": "failed"}"#,
    r#""data.type": "text""#,
    r#""data.channel": {"$neq": "instagram"}"#,
    r#""data.channel": "whatsapp""#,
    r#""data.is_ai": true"#,
    r#""data.is_ai_handling": "true""#,
    r#""data.error.code": {"$gte": 131047}"#,
    r#""data.error.code": {"$lt": 131000, "$gt": 100}"#,
    r#""data.error.code": 131047"#,
    r#""data.total": {"$gt": 1000}"#,
    r#""data.total": {"$lte": 2500.5}"#,
    r#""data.contact_id": {"$exists": true}"#,
    r#""data.agent_id": {"$exists": false}"#,
    r#""data.from": {"$prefix": "+9182"}"#,
    r#""data.content.text": {"$prefix": "Hi"}"#,
    r#""data.sender_id": "null""#,
    r#""data.message_count": {"$gte": 8, "$lte": 8}"#,
    r#""$or": [{"data.type": "text"}, {"data.is_ai": true}]"#,
    r#""$or": [{"data.whatsapp_account_id": "acct-3"}, {"data.total": {"$lt": 500}}, {"data.channel": "whatsapp", "data.closed_by": "auto"}]"#,
    r#""$and": [{"data.status": {"$neq": "sent"}}, {"$or": [{"data.whatsapp_account_id": "acct-1"}, {"data.recipient_id": {"$prefix": "+918"}}]}]"#,
];

const PATTERNS: &[&str] = &[
    "*",
    "message.*",
    "contact.*",
    "conversation.*",
    "campaign.*",
    "transfer.*",
    "message.x.*",
    "unknown.type",
];

/// Tenants: the seeds' accounts, and more that no seed event names unless
/// rewritten to.
fn tenants() -> Vec<String> {
    let mut t: Vec<String> = transports::seed::ACCOUNTS
        .iter()
        .map(|a| a.to_string())
        .collect();
    t.extend((0..40).map(|i| format!("t-{i}")));
    t.push("104996122399160".into());
    t
}

/// `n` subscriptions mixing exact types, prefixes, `*`, filters and
/// tenants, on lanes given in a shuffled order.
fn generate(n: usize, rng: &mut StdRng) -> Vec<Subscriber> {
    let tenants = tenants();
    let mut lanes: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        lanes.swap(i, rng.random_range(0..=i));
    }
    lanes
        .into_iter()
        .map(|lane| {
            let patterns = (0..rng.random_range(1..=3))
                .map(|_| {
                    let p = if rng.random_bool(0.6) {
                        EVENT_TYPES.choose(rng).copied().unwrap_or("*")
                    } else {
                        PATTERNS.choose(rng).copied().unwrap_or("*")
                    };
                    EventPattern::parse(p).expect("test patterns parse")
                })
                .collect();
            let conditions: Vec<&str> = match rng.random_range(0..10) {
                0..=3 => vec![],
                4..=7 => vec![CONDITIONS.choose(rng).copied().unwrap_or_default()],
                _ => CONDITIONS.choose_multiple(rng, 2).copied().collect(),
            };
            let tenant = rng
                .random_bool(0.7)
                .then(|| Tenant::new(tenants.choose(rng).map_or("t-0", |t| t)).expect("valid"));
            Subscriber {
                lane,
                tenant,
                subscription: Subscription {
                    patterns,
                    filter: filter(&format!("{{{}}}", conditions.join(","))),
                },
            }
        })
        .collect()
}

/// Variants of one seed event: as generated; its account rewritten to
/// other tenants, to a number, removed, duplicated.
fn variants(event_type: &str, seeds: &mut SeedEvents, rng: &mut StdRng) -> Vec<String> {
    let tenants = tenants();
    let data = seeds.data_of(event_type);
    let mut out = vec![data.to_string()];
    for _ in 0..3 {
        let mut d = data.clone();
        if let Value::Object(m) = &mut d {
            let t = tenants.choose(rng).cloned().unwrap_or_default();
            m.insert("whatsapp_account_id".into(), Value::String(t));
        }
        out.push(d.to_string());
    }
    let mut d = data.clone();
    if let Value::Object(m) = &mut d {
        m.insert("whatsapp_account_id".into(), 104996122399160u64.into());
    }
    out.push(d.to_string());
    if let Value::Object(m) = &mut d {
        m.remove("whatsapp_account_id");
    }
    out.push(d.to_string());
    // A forged duplicate, in front of the genuine key (or alone).
    let text = data.to_string();
    let rest = text.strip_prefix('{').unwrap_or("}");
    let sep = if rest == "}" { "" } else { "," };
    out.push(format!(r#"{{"whatsapp_account_id":"t-3"{sep}{rest}"#));
    out
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v
}

/// The issue's routing-equivalence test: 10,000 generated subscriptions,
/// every seed event type (and variants of each), every kind of tenant key.
#[test]
fn indexed_router_returns_what_the_linear_router_returns() {
    let mut rng = StdRng::seed_from_u64(0x12);
    let subscribers = generate(10_000, &mut rng);
    let mut seeds = SeedEvents::new(0x5eed);
    let mut events = Vec::new();
    for ty in EVENT_TYPES {
        for data in variants(ty, &mut seeds, &mut rng) {
            events.push(decode(ty, &data));
        }
    }
    events.push(decode("message.x.y", r#"{"whatsapp_account_id":"acct-1"}"#));
    events.push(decode("unknown.type", r#"{"type":"text"}"#));
    events.push(decode("message.", r#"{"type":"text"}"#));

    let tenants = tenants();
    let mut checked = 0usize;
    let mut delivered = 0usize;
    for key in [
        None,
        Some("data.whatsapp_account_id"),
        Some("header:tenant"),
        Some("key"),
    ] {
        let key = key.map(|k| TenantKey::parse(k).expect("valid key"));
        let linear = LinearRouter::new(key.clone(), subscribers.clone());
        let mut router = Router::from_table(Arc::new(RouteTable::build(
            key.clone(),
            subscribers.clone(),
        )));
        for (i, event) in events.iter().enumerate() {
            let tenant = tenants[i % tenants.len()].as_bytes();
            let forged: &[u8] = b"t-5";
            let one = [("tenant", tenant)];
            let two = [("Tenant", tenant), ("tenant", forged)];
            let records = [
                RecordParts::default(),
                RecordParts {
                    key: Some(tenant),
                    headers: &one,
                },
                // The header twice: no tenant; the key: another one.
                RecordParts {
                    key: Some(forged),
                    headers: &two,
                },
            ];
            for record in records {
                let mut want = Vec::new();
                linear.route(event, &record, |lane| want.push(lane));
                let mut got = Vec::new();
                let n = router.route_record(event, &record, |lane| got.push(lane));
                assert_eq!(n, got.len());
                assert_eq!(got, sorted(got.clone()), "ascending");
                assert_eq!(
                    got,
                    sorted(want),
                    "tenant key {key:?}, {} {}",
                    event.event_type(),
                    String::from_utf8_lossy(event.data())
                );
                checked += 1;
                delivered += got.len();
            }
        }
    }
    // The mix must make the comparison mean something: many deliveries,
    // and far fewer than every subscription per event.
    assert!(
        delivered > checked * 50,
        "{delivered} over {checked} events"
    );
    assert!(
        delivered < checked * 5_000,
        "{delivered} over {checked} events"
    );
}

#[test]
fn an_endpoint_with_overlapping_patterns_receives_an_event_once() {
    let mut r = Router::new(vec![Subscription {
        patterns: ["message.sent", "message.*", "*", "message.sent"]
            .iter()
            .map(|p| EventPattern::parse(p).unwrap())
            .collect(),
        filter: filter(r#"{"data.status": ["sent", "read"]}"#),
    }]);
    let mut got = Vec::new();
    r.route(&decode("message.sent", r#"{"status":"sent"}"#), |i| {
        got.push(i)
    });
    assert_eq!(got, vec![0]);
}

#[test]
fn a_new_table_takes_effect_at_the_next_event() {
    let sub = |pattern: &str, lane: usize| Subscriber {
        lane,
        tenant: None,
        subscription: Subscription {
            patterns: vec![EventPattern::parse(pattern).unwrap()],
            filter: Filter::default(),
        },
    };
    let mut r = Router::from_table(Arc::new(RouteTable::build(None, [sub("message.*", 4)])));
    let ev = decode("message.sent", "{}");
    let mut got = Vec::new();
    r.route(&ev, |i| got.push(i));
    assert_eq!(got, vec![4]);
    let table = Arc::new(RouteTable::build(
        Some(TenantKey::parse("data.a").unwrap()),
        [sub("contact.*", 1), sub("message.sent", 2)],
    ));
    r.set_table(table);
    got.clear();
    r.route(&ev, |i| got.push(i));
    assert_eq!(got, vec![2]);
}

/// The issue's scale test, at the router: 100,000 endpoints over 1,000
/// tenants (and a few without one); events of every tenant reach exactly
/// their tenant's subscribers and the tenant-less ones, and nobody else.
#[test]
fn a_hundred_thousand_endpoints_over_a_thousand_tenants() {
    const TENANTS: usize = 1_000;
    const ENDPOINTS: usize = 100_000;
    const UNTENANTED: usize = 50;
    let mut rng = StdRng::seed_from_u64(0x100_000);
    let tenant_of = |t: usize| format!("waba-{t:04}");
    let mut subscribers = Vec::with_capacity(ENDPOINTS);
    for lane in 0..ENDPOINTS {
        let tenant = (lane >= UNTENANTED).then(|| (lane - UNTENANTED) % TENANTS);
        let pattern = match rng.random_range(0..6) {
            0 => "*",
            1 => "message.*",
            _ => EVENT_TYPES.choose(&mut rng).copied().unwrap_or("*"),
        };
        let spec = match rng.random_range(0..8) {
            0 => r#"{"data.status": {"$in": ["sent", "read"]}}"#,
            1 => r#"{"data.type": "text", "data.from": {"$prefix": "+9182"}}"#,
            2 => r#"{"data.total": {"$gte": 1000}}"#,
            _ => "{}",
        };
        subscribers.push(Subscriber {
            lane,
            tenant: tenant.map(|t| Tenant::new(&tenant_of(t)).expect("valid")),
            subscription: Subscription {
                patterns: vec![EventPattern::parse(pattern).expect("valid")],
                filter: filter(spec),
            },
        });
    }
    // The tenant-scoped reference: the linear semantics over a tenant's
    // own endpoints and the tenant-less ones, found by construction.
    let scoped = |tenant: Option<usize>| -> LinearRouter {
        let mut own: Vec<Subscriber> = subscribers[..UNTENANTED].to_vec();
        if let Some(t) = tenant {
            own.extend(
                (UNTENANTED + t..ENDPOINTS)
                    .step_by(TENANTS)
                    .map(|i| subscribers[i].clone()),
            );
        }
        LinearRouter::new(None, strip_tenants(own))
    };
    let key = TenantKey::parse("data.whatsapp_account_id").expect("valid");
    let mut router =
        Router::from_table(Arc::new(RouteTable::build(Some(key), subscribers.clone())));
    let mut seeds = SeedEvents::new(7);
    let mut total = 0usize;
    for t in (0..TENANTS).map(Some).chain([None]) {
        let reference = scoped(t);
        for ty in EVENT_TYPES.choose_multiple(&mut rng, 3) {
            let mut data = seeds.data_of(ty);
            if let (Value::Object(m), Some(t)) = (&mut data, t) {
                m.insert("whatsapp_account_id".into(), Value::String(tenant_of(t)));
            }
            let event = decode(ty, &data.to_string());
            let mut want = Vec::new();
            reference.route(&event, &(), |lane| want.push(lane));
            let mut got = Vec::new();
            router.route(&event, |lane| got.push(lane));
            assert_eq!(got, sorted(want), "tenant {t:?}, {ty}");
            if let Some(t) = t {
                let own = |lane: &usize| *lane < UNTENANTED || (lane - UNTENANTED) % TENANTS == t;
                assert!(got.iter().all(own), "tenant {t}: another tenant's endpoint");
            }
            total += got.len();
        }
    }
    assert!(total > 10_000, "{total} deliveries in all");
}

/// Within a tenant's own list the tenant always matches: the scoped
/// reference checks types and filters only.
fn strip_tenants(subscribers: Vec<Subscriber>) -> Vec<Subscriber> {
    subscribers
        .into_iter()
        .map(|s| Subscriber { tenant: None, ..s })
        .collect()
}
