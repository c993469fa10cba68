//! Routing: which endpoints want an event.
//!
//! Subscriptions are event-type patterns (exact, `prefix.*`, `*`) plus optional
//! filters on `data` fields. Event types are few while endpoints are many, so
//! the pattern match is done once per event *type* and remembered; per event
//! only the (rare) filters are evaluated.

mod filter;

pub use filter::Filter;

use std::collections::HashMap;
use std::sync::Arc;

use transports::Event;

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

impl Subscription {
    /// Matches nothing: the place of an endpoint that is gone.
    pub fn none() -> Subscription {
        Subscription {
            patterns: Vec::new(),
            filter: Filter::default(),
        }
    }
}

/// What the router knows of one endpoint.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// None: the subscription matches nothing (a deleted endpoint's place).
    pub patterns: Vec<EventPattern>,
    pub filter: Filter,
}

/// Bound on remembered event types: producers could invent types without
/// end, and each remembered type costs a list of endpoint indices.
const MAX_CACHED_TYPES: usize = 4096;

/// Maps an event to the indices of the endpoints that receive it.
///
/// Owned by the source loop (one thread), so its cache needs no lock.
pub struct Router {
    subscriptions: Vec<Subscription>,
    by_type: HashMap<Box<str>, Arc<[usize]>>,
}

impl Router {
    pub fn new(subscriptions: Vec<Subscription>) -> Router {
        Router {
            subscriptions,
            by_type: HashMap::new(),
        }
    }

    /// Endpoints whose patterns match `event_type`, before filters.
    fn candidates(&mut self, event_type: &str) -> Arc<[usize]> {
        if let Some(hit) = self.by_type.get(event_type) {
            return hit.clone();
        }
        let found: Arc<[usize]> = self
            .subscriptions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.patterns.iter().any(|p| p.matches(event_type)))
            .map(|(i, _)| i)
            .collect();
        if self.by_type.len() < MAX_CACHED_TYPES {
            self.by_type.insert(event_type.into(), found.clone());
        }
        found
    }

    /// Calls `deliver(endpoint_index)` for every endpoint that receives `event`.
    /// Returns how many did.
    pub fn route(&mut self, event: &Event, mut deliver: impl FnMut(usize)) -> usize {
        let candidates = self.candidates(event.event_type());
        let mut n = 0;
        for &i in candidates.iter() {
            let filter = &self.subscriptions[i].filter;
            if filter.is_empty() || filter.matches(event) {
                deliver(i);
                n += 1;
            }
        }
        n
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
