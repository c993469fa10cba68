//! The record key of a Kafka delivery, taken from one field of the event's
//! `data` (`key: data.contact_id`).
//!
//! The field is found in the raw `data` bytes by [`crate::json::find`], as
//! the dispatcher's filters do: nothing is turned into a tree and nothing is
//! re-serialised.

use std::borrow::Cow;
use std::fmt;

/// Deepest field path accepted; real ones are one or two levels.
const MAX_DEPTH: usize = 8;

/// A field path below `data`, e.g. `contact_id` or `error.code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    segments: Vec<String>,
}

impl KeyPath {
    /// Parse `data.<field>[.<field>...]`; on error, why.
    pub fn parse(text: &str) -> Result<KeyPath, String> {
        let rest = text
            .strip_prefix("data.")
            .filter(|rest| rest.split('.').all(|s| !s.is_empty()))
            .ok_or_else(|| {
                "a key is a field path below data, such as `data.contact_id`".to_owned()
            })?;
        let segments: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if segments.len() > MAX_DEPTH {
            return Err(format!("a key path may be at most {MAX_DEPTH} fields deep"));
        }
        Ok(KeyPath { segments })
    }

    /// The key bytes for one event's `data`: a string field's decoded text,
    /// any other value's JSON text as the producer wrote it (`131047`,
    /// `true`). `None` when the field is missing or `null`, or `data` cannot
    /// be read.
    pub fn extract<'a>(&self, data: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        // Read from the bytes: the record was checked as UTF-8 when it was
        // decoded, and serde_json checks the strings it reads anyway.
        let raw = crate::json::find(data, &self.segments)?;
        let token = raw.get();
        if token == "null" {
            return None;
        }
        if token.starts_with('"') {
            // Borrowed unless the string has escapes.
            let s: Cow<'a, str> = serde_json::from_str(token).ok()?;
            return Some(match s {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            });
        }
        Some(Cow::Borrowed(token.as_bytes()))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data.{}", self.segments.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, data: &str) -> Option<Vec<u8>> {
        KeyPath::parse(path)
            .unwrap()
            .extract(data.as_bytes())
            .map(Cow::into_owned)
    }

    #[test]
    fn finds_strings_numbers_and_nested_fields() {
        let data = r#"{"a":[1,{"contact_id":"no"}],"contact_id":"c-1","error":{"code":131047}}"#;
        assert_eq!(key("data.contact_id", data), Some(b"c-1".to_vec()));
        assert_eq!(key("data.error.code", data), Some(b"131047".to_vec()));
        assert_eq!(
            key("data.error", data),
            Some(br#"{"code":131047}"#.to_vec())
        );
        // Escapes are decoded: two spellings of one id are one key.
        assert_eq!(
            key("data.contact_id", r#"{"contact_id":"c\u002d1"}"#),
            Some(b"c-1".to_vec())
        );
    }

    #[test]
    fn missing_null_and_unreadable_give_none() {
        assert_eq!(key("data.contact_id", r#"{"other":1}"#), None);
        assert_eq!(key("data.contact_id", r#"{"contact_id":null}"#), None);
        assert_eq!(key("data.error.code", r#"{"error":"flat"}"#), None);
        assert_eq!(key("data.x", "not json"), None);
        let path = KeyPath::parse("data.x").unwrap();
        assert_eq!(path.extract(b"\xff\xfe"), None);
    }

    #[test]
    fn refuses_paths_outside_data() {
        for bad in ["contact_id", "data.", "data..x", "data", "event", "data.a."] {
            assert!(KeyPath::parse(bad).is_err(), "{bad}");
        }
        let deep = format!("data.{}", ["a"; 9].join("."));
        assert!(KeyPath::parse(&deep).unwrap_err().contains("deep"));
        assert_eq!(KeyPath::parse("data.a.b").unwrap().to_string(), "data.a.b");
    }
}
