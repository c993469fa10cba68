//! What the load tester sends: seed events of every documented type, and
//! which deliveries each of them must cause.
//!
//! Events come from [`dispatcher::seed`] (the shapes and sizes of the
//! platform's public webhook docs, unique ids), deterministic for a seed, so
//! that a run can be repeated and a sink started on its own can work out
//! what it should receive. The one change made here is the send timestamp:
//! it is written with microseconds, so that the end-to-end age a sink
//! measures is not rounded to whole milliseconds.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dispatcher::route::{
    EventPattern, Filter, RouteTable, Router, Subscriber, Subscription, Tenant, TenantKey,
};
use dispatcher::seed::SeedEvents;
use transports::model::format_rfc3339_ms;
use transports::{DeliveryId, Event, SourceRef};

/// The seed of runs that do not name one, so that runs compare like with like.
pub const DEFAULT_SEED: u64 = 0x10ad;

/// The Standard Webhooks example secret, used when an endpoint names none.
pub const DEFAULT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The largest record the dispatcher accepts by default.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// One source record.
#[derive(Debug, Clone)]
pub struct Record {
    pub event_type: &'static str,
    /// The producer's event id (`id` in the record; also the Kafka key).
    pub id: String,
    pub value: Bytes,
    /// The contact it is about, when the workload has `keys`: all of a
    /// contact's events go to one partition.
    pub contact: Option<usize>,
}

impl Record {
    /// The record decoded as the dispatcher decodes it. Seed records always
    /// decode; `None` would mean the seed generator broke.
    pub fn decode(&self) -> Option<Event> {
        Event::decode(self.value.clone(), source_ref(), None, MAX_EVENT_BYTES).ok()
    }
}

/// Where decoded records claim to come from. Seed events carry an `id`, so
/// delivery ids never depend on the source position.
fn source_ref() -> SourceRef {
    SourceRef {
        topic: "loadtest".into(),
        partition: 0,
        offset: 0,
    }
}

/// Where the events of a scenario with tenants carry theirs.
pub const TENANT_KEY: &str = "data.whatsapp_account_id";

/// The name of tenant `i` of a scenario's `tenants`.
pub fn tenant_name(i: usize) -> String {
    format!("t-{i:04}")
}

/// A deterministic stream of seed records.
pub struct Workload {
    seeds: SeedEvents,
    seed: u64,
    produced: u64,
    /// Events name tenants `t-0000` … in turn; 0: the seeds' own accounts.
    tenants: usize,
    /// Events name contacts `c-00000` … in turn (`data.contact_id`); 0:
    /// the seeds' own.
    keys: usize,
}

impl Workload {
    pub fn new(seed: u64) -> Workload {
        Workload::with_tenants(seed, 0)
    }

    /// Each event's `data.whatsapp_account_id` names one of `tenants`
    /// tenants, in turn (see [`tenant_name`]).
    pub fn with_tenants(seed: u64, tenants: usize) -> Workload {
        Workload {
            seeds: SeedEvents::new(seed),
            seed,
            produced: 0,
            tenants,
            keys: 0,
        }
    }

    /// Each event's `data.contact_id` names one of `keys` contacts, in turn
    /// (see [`contact_name`]).
    pub fn with_keys(mut self, keys: usize) -> Workload {
        self.keys = keys;
        self
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Records made so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The next record, stamped with the current time.
    pub fn next_record(&mut self) -> Record {
        self.next_at(now_us())
    }

    /// The next record, stamped with `at_us` (microseconds since the epoch).
    pub fn next_at(&mut self, at_us: i64) -> Record {
        let ms = at_us.div_euclid(1000);
        let (event_type, id, mut value) = self.seeds.next_event(ms);
        if self.tenants > 0 {
            value = with_field(
                value,
                "whatsapp_account_id",
                &tenant_name(self.produced as usize % self.tenants),
            );
        }
        let contact = (self.keys > 0).then(|| self.produced as usize % self.keys);
        if let Some(c) = contact {
            value = with_field(value, "contact_id", &contact_name(c));
        }
        self.produced += 1;
        Record {
            contact,
            event_type,
            id,
            value: Bytes::from(with_microseconds(value, ms, at_us.rem_euclid(1000))),
        }
    }
}

/// Rewrite every copy of the millisecond timestamp the seed generator wrote
/// (`…T12:00:00.123Z`) with microseconds (`…T12:00:00.123456Z`). Only the
/// exact text of that instant is replaced; both forms are RFC 3339.
fn with_microseconds(value: Vec<u8>, ms: i64, micros: i64) -> Vec<u8> {
    let text = format_rfc3339_ms(ms);
    let Some(stem) = text.strip_suffix('Z') else {
        return value;
    };
    let (old, new) = (text.as_bytes(), format!("{stem}{micros:03}Z").into_bytes());
    let mut out = Vec::with_capacity(value.len() + 16);
    let mut rest = &value[..];
    while let Some(at) = find(rest, old) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(&new);
        rest = &rest[at + old.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The record with `data.whatsapp_account_id` set to `tenant` (added to the
/// event types whose seeds have no account).
/// The name of contact `i` of a workload with `keys`.
pub fn contact_name(i: usize) -> String {
    format!("c-{i:05}")
}

/// The record with `data.<field>` set to `text`.
fn with_field(value: Vec<u8>, field: &str, text: &str) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&value) else {
        return value;
    };
    if let Some(data) = v.get_mut("data").and_then(|d| d.as_object_mut()) {
        data.insert(field.into(), text.into());
    }
    serde_json::to_vec(&v).unwrap_or(value)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The endpoints of a run as the dispatcher routes to them: which of them
/// receive an event, and under which delivery ids.
pub struct Routing {
    ids: Vec<String>,
    router: Router,
}

/// One delivery an event must cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub endpoint: usize,
    pub id: DeliveryId,
}

/// An endpoint's subscription as a scenario states it.
#[derive(Debug, Clone)]
pub struct EndpointRoute {
    pub id: String,
    pub events: Vec<String>,
    pub filter: std::collections::BTreeMap<String, dispatcher::config::FilterValue>,
    /// Its tenant: it receives that tenant's events only (see
    /// [`TENANT_KEY`]).
    pub tenant: Option<String>,
}

impl Routing {
    /// Uses the dispatcher's own pattern and filter semantics, so that a
    /// scenario means the same to the load tester as to the dispatcher.
    pub fn new(endpoints: &[EndpointRoute]) -> Result<Routing, String> {
        let mut subscribers = Vec::with_capacity(endpoints.len());
        for (lane, ep) in endpoints.iter().enumerate() {
            let patterns = ep
                .events
                .iter()
                .map(|p| EventPattern::parse(p).map_err(|e| format!("endpoint {}: {e}", ep.id)))
                .collect::<Result<Vec<_>, _>>()?;
            let filter = Filter::parse(&ep.filter)
                .map_err(|(key, e)| format!("endpoint {}: filter {key}: {e}", ep.id))?;
            let tenant = ep
                .tenant
                .as_deref()
                .map(Tenant::new)
                .transpose()
                .map_err(|e| format!("endpoint {}: tenant: {e}", ep.id))?;
            subscribers.push(Subscriber {
                lane,
                tenant,
                subscription: Subscription { patterns, filter },
            });
        }
        let tenant_key = endpoints
            .iter()
            .any(|e| e.tenant.is_some())
            .then(|| TenantKey::parse(TENANT_KEY).expect("a valid tenant key"));
        Ok(Routing {
            ids: endpoints.iter().map(|e| e.id.clone()).collect(),
            router: Router::from_table(Arc::new(RouteTable::build(tenant_key, subscribers))),
        })
    }

    pub fn endpoint_ids(&self) -> &[String] {
        &self.ids
    }

    /// Every delivery `event` must cause, in endpoint order.
    pub fn expected(&mut self, event: &Event, out: &mut Vec<Expected>) {
        out.clear();
        let ids = &self.ids;
        self.router.route(event, |i| {
            out.push(Expected {
                endpoint: i,
                id: DeliveryId::derive(event, &ids[i]),
            })
        });
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher::seed::EVENT_TYPES;

    #[test]
    fn timestamps_carry_microseconds_and_still_decode() {
        let mut w = Workload::new(1);
        let at = 1_700_000_000_123_456;
        for ty in EVENT_TYPES {
            let r = w.next_at(at);
            assert_eq!(r.event_type, *ty);
            let ev = r.decode().expect("decodes");
            assert_eq!(ev.timestamp(), "2023-11-14T22:13:20.123456Z");
            assert_eq!(ev.id(), Some(r.id.as_str()));
            // No millisecond-only copy is left behind in `data`.
            let text = std::str::from_utf8(&r.value).unwrap();
            assert!(!text.contains("20.123Z"), "{text}");
        }
        assert_eq!(w.produced(), EVENT_TYPES.len() as u64);
    }

    #[test]
    fn the_same_seed_gives_the_same_ids() {
        let (mut a, mut b) = (Workload::new(9), Workload::new(9));
        for _ in 0..30 {
            assert_eq!(a.next_record().id, b.next_record().id);
        }
    }

    #[test]
    fn routing_follows_patterns_and_derives_delivery_ids() {
        let route = |id: &str, events: &[&str]| EndpointRoute {
            id: id.into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            filter: Default::default(),
            tenant: None,
        };
        let mut routing =
            Routing::new(&[route("all", &["*"]), route("msgs", &["message.*"])]).unwrap();
        let mut w = Workload::new(3);
        let mut out = Vec::new();
        let first = w.next_record(); // message.received
        let ev = first.decode().unwrap();
        routing.expected(&ev, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].id, DeliveryId::derive(&ev, "msgs"));
        for _ in 0..5 {
            w.next_record();
        }
        let contact = w.next_record(); // contact.created
        assert_eq!(contact.event_type, "contact.created");
        routing.expected(&contact.decode().unwrap(), &mut out);
        assert_eq!(out.iter().map(|e| e.endpoint).collect::<Vec<_>>(), [0]);
        assert!(Routing::new(&[route("bad", &["message*"])]).is_err());
    }

    #[test]
    fn with_tenants_events_name_each_tenant_in_turn_and_reach_only_its_endpoints() {
        let mut w = Workload::with_tenants(5, 3);
        let route = |id: &str, tenant: Option<&str>| EndpointRoute {
            id: id.into(),
            events: vec!["*".into()],
            filter: Default::default(),
            tenant: tenant.map(str::to_owned),
        };
        let mut routing = Routing::new(&[
            route("zero", Some("t-0000")),
            route("one", Some("t-0001")),
            route("platform", None),
        ])
        .unwrap();
        let mut out = Vec::new();
        for i in 0..2 * EVENT_TYPES.len() {
            let r = w.next_record();
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            let tenant = tenant_name(i % 3);
            assert_eq!(
                v["data"]["whatsapp_account_id"],
                tenant.as_str(),
                "{}",
                r.event_type
            );
            routing.expected(&r.decode().expect("still a valid event"), &mut out);
            let ids: Vec<usize> = out.iter().map(|e| e.endpoint).collect();
            let expected = match i % 3 {
                0 => vec![0, 2],
                1 => vec![1, 2],
                _ => vec![2],
            };
            assert_eq!(ids, expected, "event {i} of {tenant}");
        }
    }
}
