//! Filters on `data` fields: `filter: { "data.whatsapp_account_id": "..." }`.
//!
//! A filter looks fields up inside the raw `data` bytes with
//! [`transports::json::find`], which skips everything but the wanted key, so
//! matching allocates nothing and the data is never turned into a tree.

use std::borrow::Cow;
use std::collections::BTreeMap;

use transports::Event;

use crate::config::{FilterValue, Scalar};

/// All conditions must hold; each condition accepts any of its values.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
struct Condition {
    /// Path below `data`, e.g. `["whatsapp_account_id"]`.
    path: Vec<String>,
    any_of: Vec<String>,
}

impl Filter {
    /// Build from config; on error returns the offending key and why.
    pub fn parse(spec: &BTreeMap<String, FilterValue>) -> Result<Filter, (String, String)> {
        let mut conditions = Vec::with_capacity(spec.len());
        for (key, value) in spec {
            let path = key
                .strip_prefix("data.")
                .filter(|rest| rest.split('.').all(|p| !p.is_empty()))
                .ok_or_else(|| {
                    (
                        key.clone(),
                        "a filter key is a field path below data, such as `data.whatsapp_account_id`".to_owned(),
                    )
                })?;
            let any_of: Vec<String> = match value {
                FilterValue::One(Scalar(s)) => vec![s.clone()],
                FilterValue::AnyOf(list) => list.iter().map(|Scalar(s)| s.clone()).collect(),
            };
            if any_of.is_empty() {
                return Err((key.clone(), "an empty list matches nothing".to_owned()));
            }
            conditions.push(Condition {
                path: path.split('.').map(str::to_owned).collect(),
                any_of,
            });
        }
        Ok(Filter { conditions })
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Strings compare by their decoded text; numbers and booleans by their
    /// JSON text (`131047` matches a filter value of `131047` or `"131047"`).
    /// A missing field, or data that cannot be read, does not match.
    pub fn matches(&self, event: &Event) -> bool {
        // `data` was checked as UTF-8 when the event was decoded.
        let data = event.data();
        self.conditions.iter().all(|c| {
            transports::json::find(data, &c.path).is_some_and(|raw| {
                let text = raw.get();
                let value: Cow<'_, str> = if text.starts_with('"') {
                    match serde_json::from_str::<Cow<'_, str>>(text) {
                        Ok(s) => s,
                        Err(_) => return false,
                    }
                } else {
                    Cow::Borrowed(text)
                };
                c.any_of.iter().any(|want| *want == value)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use transports::SourceRef;

    fn event(data: &str) -> Event {
        let raw = format!(r#"{{"event":"x.y","data":{data}}}"#);
        let src = SourceRef {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        Event::decode(Bytes::from(raw), src, Some(0), 1 << 20).unwrap()
    }

    fn filter(pairs: &[(&str, FilterValue)]) -> Filter {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Filter::parse(&m).unwrap()
    }

    fn one(s: &str) -> FilterValue {
        FilterValue::One(Scalar(s.into()))
    }

    #[test]
    fn matches_strings_numbers_nested_and_any_of() {
        let f = filter(&[("data.whatsapp_account_id", one("acct-1"))]);
        assert!(f.matches(&event(
            r#"{"a":[1,{"b":2}],"whatsapp_account_id":"acct-1"}"#
        )));
        assert!(!f.matches(&event(r#"{"whatsapp_account_id":"acct-2"}"#)));
        assert!(!f.matches(&event(r#"{"other":"acct-1"}"#)));
        // Escaped JSON strings compare by their decoded text.
        assert!(f.matches(&event(r#"{"whatsapp_account_id":"acct\u002d1"}"#)));

        let nested = filter(&[("data.error.code", one("131047"))]);
        assert!(nested.matches(&event(r#"{"error":{"code":131047,"message":"x"}}"#)));
        assert!(!nested.matches(&event(r#"{"error":{"code":131026}}"#)));
        assert!(!nested.matches(&event(r#"{"error":"flat"}"#)));

        let any = filter(&[(
            "data.channel",
            FilterValue::AnyOf(vec![Scalar("whatsapp".into()), Scalar("instagram".into())]),
        )]);
        assert!(any.matches(&event(r#"{"channel":"instagram"}"#)));
        assert!(!any.matches(&event(r#"{"channel":"messenger"}"#)));

        let both = filter(&[
            ("data.channel", one("whatsapp")),
            ("data.is_ai", one("true")),
        ]);
        assert!(both.matches(&event(r#"{"channel":"whatsapp","is_ai":true}"#)));
        assert!(!both.matches(&event(r#"{"channel":"whatsapp","is_ai":false}"#)));
    }

    /// Finding 8 of the security review: with a duplicated tenant key the
    /// filter read the first value while receivers read the last, so a
    /// producer could route one tenant's event to another. Now neither
    /// tenant's filter matches: the record fails closed.
    #[test]
    fn a_duplicated_filtered_key_matches_no_tenant() {
        let a = filter(&[("data.whatsapp_account_id", one("acct-A"))]);
        let b = filter(&[("data.whatsapp_account_id", one("acct-B"))]);
        let forged = event(r#"{"whatsapp_account_id":"acct-A","whatsapp_account_id":"acct-B"}"#);
        assert!(!a.matches(&forged));
        assert!(!b.matches(&forged));
        let nested = filter(&[("data.owner.id", one("acct-A"))]);
        assert!(!nested.matches(&event(r#"{"owner":{"id":"acct-A","id":"acct-B"}}"#)));
        assert!(a.matches(&event(
            r#"{"whatsapp_account_id":"acct-A","other":1,"other":2}"#
        )));
    }

    #[test]
    fn refuses_bad_keys() {
        for key in ["whatsapp_account_id", "data.", "data..x", "event"] {
            let m = [(key.to_string(), one("v"))].into_iter().collect();
            let (k, msg) = Filter::parse(&m).unwrap_err();
            assert_eq!(k, key);
            assert!(msg.contains("below data"), "{msg}");
        }
    }
}
