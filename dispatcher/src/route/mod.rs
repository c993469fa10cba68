//! Routing: which endpoints want an event.
//!
//! Subscriptions are event-type patterns (exact, `prefix.*`, `*`), an
//! optional tenant and optional filters on `data` fields. The
//! [`RouteTable`] indexes them by type, tenant and exact-match filter
//! values (see [`index`]), so that routing one event costs about the same
//! with ten endpoints or a hundred thousand; the [`Router`] is one source
//! loop's handle on the current table.

#[cfg(test)]
mod equivalence;
mod fields;
mod filter;
pub mod index;
pub mod linear;
pub mod tenant;

pub use filter::{Filter, MAX_NESTING};
pub use index::{RouteTable, Subscriber};
pub use linear::LinearRouter;
pub use tenant::{RecordMeta, RecordParts, Tenant, TenantKey};

use std::collections::HashMap;
use std::sync::Arc;

use transports::Event;

use fields::Fields;

/// One `events:` entry of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    All,
    /// `message.*` matches `message.sent` and `message.x.y`, not `message`.
    Prefix(String),
    Exact(String),
}

impl EventPattern {
    pub fn parse(text: &str) -> Result<EventPattern, String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        };
        if text == "*" {
            return Ok(EventPattern::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            if valid(prefix) {
                return Ok(EventPattern::Prefix(format!("{prefix}.")));
            }
        } else if valid(text) {
            return Ok(EventPattern::Exact(text.to_owned()));
        }
        Err(format!(
            "`{text}` is not an event pattern (an event type like `message.sent`, a prefix like `message.*`, or `*`)"
        ))
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::All => true,
            EventPattern::Prefix(p) => event_type.starts_with(p.as_str()),
            EventPattern::Exact(e) => e == event_type,
        }
    }
}

/// What one endpoint subscribes to: event types, and a filter on `data`
/// (its lane and tenant are in [`Subscriber`]).
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Empty: the subscription matches nothing.
    pub patterns: Vec<EventPattern>,
    pub filter: Filter,
}

/// Bound on remembered event types: producers could invent types without
/// end, and each remembered type costs a list of groups.
const MAX_CACHED_TYPES: usize = 4096;

/// Maps an event to the indices of the endpoints (lanes) that receive it.
///
/// Owned by the source loop (one thread), so its cache and scratch need no
/// lock; the table itself is shared and never changes.
pub struct Router {
    table: Arc<RouteTable>,
    /// Per event type, the table's groups whose patterns match it.
    by_type: HashMap<Box<str>, Arc<[u32]>>,
    fields: Fields,
    out: Vec<usize>,
}

impl Router {
    /// Lanes are positions in `subscriptions`; no tenants.
    pub fn new(subscriptions: Vec<Subscription>) -> Router {
        let subscribers = subscriptions
            .into_iter()
            .enumerate()
            .map(|(lane, subscription)| Subscriber {
                lane,
                tenant: None,
                subscription,
            });
        Router::from_table(Arc::new(RouteTable::build(None, subscribers)))
    }

    pub fn from_table(table: Arc<RouteTable>) -> Router {
        let mut fields = Fields::default();
        fields.reset(table.fields());
        Router {
            table,
            by_type: HashMap::new(),
            fields,
            out: Vec::new(),
        }
    }

    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// Route with `table` from the next event on.
    pub fn set_table(&mut self, table: Arc<RouteTable>) {
        self.by_type.clear();
        self.fields.reset(table.fields());
        self.table = table;
    }

    /// [`Router::route_record`] without the record: no key, no headers.
    pub fn route(&mut self, event: &Event, deliver: impl FnMut(usize)) -> usize {
        self.route_record(event, &(), deliver)
    }

    /// Calls `deliver(lane)` for every endpoint that receives `event`, in
    /// ascending lane order, each once. `record` gives the tenant key its
    /// record key and headers. Returns how many received it.
    pub fn route_record<R: RecordMeta + ?Sized>(
        &mut self,
        event: &Event,
        record: &R,
        mut deliver: impl FnMut(usize),
    ) -> usize {
        let event_type = event.event_type();
        let groups = match self.by_type.get(event_type) {
            Some(groups) => groups.clone(),
            None => {
                let groups: Arc<[u32]> = self.table.groups_for(event_type).into();
                if self.by_type.len() < MAX_CACHED_TYPES {
                    self.by_type.insert(event_type.into(), groups.clone());
                }
                groups
            }
        };
        if groups.is_empty() {
            return 0;
        }
        self.table
            .route_into(&groups, event, record, &mut self.fields, &mut self.out);
        for &lane in &self.out {
            deliver(lane);
        }
        self.out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FilterValue, Scalar};
    use bytes::Bytes;
    use std::collections::BTreeMap;
    use transports::SourceRef;

    fn event(raw: &str) -> Event {
        let src = SourceRef {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        Event::decode(
            Bytes::copy_from_slice(raw.as_bytes()),
            src,
            Some(0),
            1 << 20,
        )
        .unwrap()
    }

    fn sub(patterns: &[&str], filter: &[(&str, FilterValue)]) -> Subscription {
        let filter: BTreeMap<String, FilterValue> = filter
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Subscription {
            patterns: patterns
                .iter()
                .map(|p| EventPattern::parse(p).unwrap())
                .collect(),
            filter: Filter::parse(&filter).unwrap(),
        }
    }

    fn routed(router: &mut Router, raw: &str) -> Vec<usize> {
        let mut out = Vec::new();
        let n = router.route(&event(raw), |i| out.push(i));
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn patterns() {
        assert!(EventPattern::parse("message.*")
            .unwrap()
            .matches("message.sent"));
        assert!(!EventPattern::parse("message.*").unwrap().matches("message"));
        assert!(!EventPattern::parse("message.*")
            .unwrap()
            .matches("messages.sent"));
        assert!(EventPattern::parse("*").unwrap().matches("anything.at.all"));
        assert!(EventPattern::parse("contact.created")
            .unwrap()
            .matches("contact.created"));
        assert!(!EventPattern::parse("contact.created")
            .unwrap()
            .matches("contact.updated"));
        for bad in ["", "message*", "*.sent", "a b", "message.**", ".*"] {
            assert!(
                EventPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn fans_out_to_every_matching_endpoint() {
        let acct = FilterValue::One(Scalar("acct-1".into()));
        let mut r = Router::new(vec![
            sub(&["message.*"], &[]),
            sub(&["*"], &[]),
            sub(&["contact.created", "message.read"], &[]),
            sub(&["message.received"], &[("data.whatsapp_account_id", acct)]),
        ]);
        assert_eq!(
            routed(
                &mut r,
                r#"{"event":"message.received","data":{"whatsapp_account_id":"acct-1"}}"#
            ),
            vec![0, 1, 3]
        );
        assert_eq!(
            routed(
                &mut r,
                r#"{"event":"message.received","data":{"whatsapp_account_id":"acct-2"}}"#
            ),
            vec![0, 1]
        );
        assert_eq!(
            routed(&mut r, r#"{"event":"message.read","data":{}}"#),
            vec![0, 1, 2]
        );
        assert_eq!(
            routed(&mut r, r#"{"event":"contact.created","data":{}}"#),
            vec![1, 2]
        );
        assert_eq!(
            routed(&mut r, r#"{"event":"campaign.completed","data":{}}"#),
            vec![1]
        );
    }

    #[test]
    fn type_cache_is_bounded() {
        let mut r = Router::new(vec![sub(&["*"], &[])]);
        for i in 0..MAX_CACHED_TYPES + 10 {
            let raw = format!(r#"{{"event":"t{i}","data":{{}}}}"#);
            assert_eq!(routed(&mut r, &raw), vec![0]);
        }
        assert_eq!(r.by_type.len(), MAX_CACHED_TYPES);
    }
}
