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

/// What a field lookup found.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    Found(&'a RawValue),
    /// A level is missing, or is not an object.
    Absent,
    /// A level has the wanted key twice, or the JSON is not valid: the
    /// field has no single value, and conditions on it must fail closed.
    Ambiguous,
}

impl<'a> Lookup<'a> {
    pub fn found(self) -> Option<&'a RawValue> {
        match self {
            Lookup::Found(v) => Some(v),
            Lookup::Absent | Lookup::Ambiguous => None,
        }
    }
}

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
    lookup(json, path).found()
}

/// [`find`], telling a missing field from one that has no single value
/// (a duplicated key): "field absent" conditions must not hold for the
/// latter, or a forged record could satisfy them.
pub fn lookup<'a, S: AsRef<str>>(json: &'a [u8], path: &[S]) -> Lookup<'a> {
    let mut current = json;
    let mut found = Lookup::Absent;
    for segment in path {
        if !is_object(current) {
            return Lookup::Absent;
        }
        let mut de = serde_json::Deserializer::from_slice(current);
        match FindKey(segment.as_ref()).deserialize(&mut de) {
            Ok(Some(value)) => {
                current = value.get().as_bytes();
                found = Lookup::Found(value);
            }
            Ok(None) => return Lookup::Absent,
            Err(_) => return Lookup::Ambiguous,
        }
    }
    found
}

/// Whether `json` starts (after white space) with an object: anything else
/// has no fields, which is not an error.
pub fn is_object(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

/// The text of the JSON string `raw` (a string token, quotes included),
/// borrowed from `raw` unless it has escape sequences; `None` when `raw`
/// is not a valid string token.
pub fn str_value(raw: &str) -> Option<Cow<'_, str>> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let text = JsonStr.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(text)
}

/// Deserializes a JSON string, borrowing it when it has no escapes.
/// (`Cow<str>`'s own `Deserialize` always copies into a `String`: one
/// allocation per key of every object walked.)
pub struct JsonStr;

impl<'de> DeserializeSeed<'de> for JsonStr {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for JsonStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
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
        while let Some(key) = map.next_key_seed(JsonStr)? {
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

    #[test]
    fn strings_borrow_unless_escaped() {
        assert!(matches!(
            str_value(r#""plain""#),
            Some(Cow::Borrowed("plain"))
        ));
        assert!(matches!(str_value(r#""a\u0021""#), Some(Cow::Owned(s)) if s == "a!"));
        assert!(str_value("12").is_none());
        assert!(str_value(r#""open"#).is_none());
        assert!(str_value(r#""a" "b""#).is_none());
    }

    #[test]
    fn lookup_tells_absent_from_ambiguous() {
        let json = br#"{"a":{"b":1},"s":"x","d":1,"d":2}"#;
        assert_eq!(
            lookup(json, &["a", "b"]).found().map(|r| r.get()),
            Some("1")
        );
        assert!(matches!(lookup(json, &["a", "c"]), Lookup::Absent));
        assert!(
            matches!(lookup(json, &["s", "c"]), Lookup::Absent),
            "a string has no fields"
        );
        assert!(matches!(lookup(json, &["zz"]), Lookup::Absent));
        assert!(matches!(lookup(json, &["d"]), Lookup::Ambiguous));
        assert!(matches!(lookup(json, &["d", "x"]), Lookup::Ambiguous));
        assert!(matches!(lookup(b"{\"a\":", &["a"]), Lookup::Ambiguous));
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
