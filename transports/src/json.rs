//! Reading one field out of raw JSON without building a tree.
//!
//! Filters (in the dispatcher) and the Kafka transport's record key both
//! need a single field of an event's `data`. A visitor that skips every
//! other key finds it in the original bytes: nothing is allocated for the
//! rest of the object and nothing is re-serialised.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The raw value at `path` (one key per level) inside the JSON object
/// `json`; `None` when a level is missing or not an object, the JSON is not
/// valid, or a level has the wanted key twice.
///
/// Parsers disagree on duplicate keys (serde_json's map keeps the last,
/// this visitor saw the first, JavaScript keeps the last): a producer
/// could make a tenant filter read one value while the receiver reads
/// another. A duplicated key therefore finds nothing, so a filter on it
/// fails closed: it matches no endpoint.
pub fn find<'a, S: AsRef<str>>(json: &'a [u8], path: &[S]) -> Option<&'a RawValue> {
    let mut current = json;
    let mut found = None;
    for segment in path {
        let mut de = serde_json::Deserializer::from_slice(current);
        let value = FindKey(segment.as_ref()).deserialize(&mut de).ok()??;
        current = value.get().as_bytes();
        found = Some(value);
    }
    found
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
            if key == self.0 {
                if found.is_some() {
                    return Err(serde::de::Error::custom("duplicate key"));
                }
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

    #[test]
    fn finds_nested_fields_and_nothing_else() {
        let json = br#"{"a":[1,{"x":2}],"b":{"c":"d\u0021","e":null},"f":1.50}"#;
        assert_eq!(find(json, &["f"]).map(|r| r.get()), Some("1.50"));
        assert_eq!(
            find(json, &["b", "c"]).map(|r| r.get()),
            Some(r#""d\u0021""#)
        );
        assert_eq!(find(json, &["b", "e"]).map(|r| r.get()), Some("null"));
        assert!(find(json, &["b", "zz"]).is_none());
        assert!(find(json, &["a", "x"]).is_none(), "arrays are not objects");
        assert!(find(b"not json", &["a"]).is_none());
    }

    /// Finding 8 of the security review: `{"acct":"A","acct":"B"}` read as
    /// `A` here and as `B` by most receivers. Now it reads as nothing, at
    /// any level, also when spelt with an escape.
    #[test]
    fn a_duplicated_key_finds_nothing() {
        assert!(find(br#"{"acct":"A","acct":"B"}"#, &["acct"]).is_none());
        assert!(find(br#"{"acct":"A","acc\u0074":"B"}"#, &["acct"]).is_none());
        assert!(find(br#"{"o":{"acct":"A","acct":"B"}}"#, &["o", "acct"]).is_none());
        assert!(find(br#"{"o":{"acct":"A"},"o":{"acct":"B"}}"#, &["o", "acct"]).is_none());
        // Duplicates of other keys do not matter to this lookup.
        assert_eq!(
            find(br#"{"x":1,"x":2,"acct":"A"}"#, &["acct"]).map(|r| r.get()),
            Some(r#""A""#)
        );
    }
}
