//! Filters on `data` fields: `filter: { "data.whatsapp_account_id": "..." }`.
//!
//! A filter looks fields up inside the raw `data` bytes with a visitor that
//! skips everything but the wanted key, so matching allocates nothing and the
//! data is never turned into a tree.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
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
        let Ok(data) = std::str::from_utf8(event.data()) else {
            return false;
        };
        self.conditions.iter().all(|c| {
            lookup(data, &c.path).is_some_and(|raw| {
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

/// The raw value at `path` inside the JSON object `json`.
fn lookup<'a>(json: &'a str, path: &[String]) -> Option<&'a RawValue> {
    let (first, rest) = path.split_first()?;
    let mut de = serde_json::Deserializer::from_str(json);
    let found = FindKey(first).deserialize(&mut de).ok()??;
    if rest.is_empty() {
        Some(found)
    } else {
        lookup(found.get(), rest)
    }
}

/// Walks one JSON object and returns the value of one key, skipping the rest.
struct FindKey<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for FindKey<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FindKey<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && key == self.0 {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
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
