//! Tenants: whose event this is (`routing.tenant_key`), and whose endpoint
//! (`endpoints[].tenant`).
//!
//! An event goes to the endpoints of its tenant plus the endpoints that
//! have none. An event whose tenant cannot be found (no tenant key, the
//! field, header or key is missing, or it is ambiguous) goes to the
//! tenant-less endpoints only: an event of unknown owner never reaches a
//! customer's endpoint.

use std::borrow::Cow;
use std::fmt;

use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};
use transports::json::Lookup;
use transports::Event;

use super::filter::{parse_path, text_of, Path};

/// Where an event's tenant is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantKey {
    /// `data.<field>` (or `data.<field>.<nested>`): a string field, or a
    /// number by its JSON text. Any other value means no tenant.
    Data(Path),
    /// `header:<name>`: the value of a record header, the name matched
    /// ignoring ASCII case. Absent or repeated: no tenant.
    Header(Box<str>),
    /// `key`: the record key.
    Key,
}

/// Longest tenant accepted: tenant ids are account ids, a few dozen bytes.
pub const MAX_TENANT_LEN: usize = 256;

impl TenantKey {
    pub fn parse(text: &str) -> Result<TenantKey, String> {
        if text == "key" {
            return Ok(TenantKey::Key);
        }
        if let Some(name) = text.strip_prefix("header:") {
            if !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic()) {
                return Ok(TenantKey::Header(name.into()));
            }
            return Err(format!(
                "`{text}`: a header name is 1 to 255 visible ASCII characters, as in `header:tenant-id`"
            ));
        }
        if let Some(path) = parse_path(text) {
            return Ok(TenantKey::Data(path));
        }
        Err(format!(
            "`{text}` is not a tenant key (a field below data such as `data.whatsapp_account_id`, a record header as `header:<name>`, or `key` for the record key)"
        ))
    }

    /// The event's tenant, read the straightforward way (the reference the
    /// indexed router is tested against).
    pub fn resolve<'a, R: RecordMeta + ?Sized>(
        &self,
        event: &'a Event,
        record: &'a R,
    ) -> Option<Cow<'a, [u8]>> {
        match self {
            TenantKey::Key => record.key().map(Cow::Borrowed),
            TenantKey::Header(name) => record.header(name).map(Cow::Borrowed),
            TenantKey::Data(path) => match transports::json::lookup(event.data(), path) {
                Lookup::Found(raw) => match tenant_text(raw.get())? {
                    Cow::Borrowed(s) => Some(Cow::Borrowed(s.as_bytes())),
                    Cow::Owned(s) => Some(Cow::Owned(s.into_bytes())),
                },
                Lookup::Absent | Lookup::Ambiguous => None,
            },
        }
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenantKey::Key => f.write_str("key"),
            TenantKey::Header(name) => write!(f, "header:{name}"),
            TenantKey::Data(path) => write!(f, "data.{}", path.join(".")),
        }
    }
}

/// The tenant a data field's JSON value names: a string's decoded text or
/// a number's JSON text; nothing for other kinds (an object, a list, null
/// or a boolean names no one).
pub(crate) fn tenant_text(raw: &str) -> Option<Cow<'_, str>> {
    match raw.as_bytes().first()? {
        b'"' | b'-' | b'0'..=b'9' => text_of(raw),
        _ => None,
    }
}

/// An endpoint's tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Box<str>);

impl Tenant {
    /// 1 to 256 bytes, no control characters: tenants show in logs, API
    /// paths and (later) metric labels.
    pub fn new(text: &str) -> Result<Tenant, String> {
        if text.is_empty() || text.len() > MAX_TENANT_LEN || text.chars().any(char::is_control) {
            return Err(format!(
                "a tenant is 1 to {MAX_TENANT_LEN} bytes without control characters"
            ));
        }
        Ok(Tenant(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What routing may read of a Kafka record besides its value: the record
/// key and headers, borrowed (nothing is copied per event).
pub trait RecordMeta {
    fn key(&self) -> Option<&[u8]>;
    /// The value of the header named `name` (ignoring ASCII case); `None`
    /// when there is no such header or more than one: as with a duplicated
    /// JSON key, a tenant read twice is read as no tenant.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// No key, no headers: an event routed without its record.
impl RecordMeta for () {
    fn key(&self) -> Option<&[u8]> {
        None
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// A record's key and headers given as plain slices (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordParts<'a> {
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl RecordMeta for RecordParts<'_> {
    fn key(&self) -> Option<&[u8]> {
        self.key
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        single(
            self.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| Some(*v)),
        )
    }
}

impl RecordMeta for BorrowedMessage<'_> {
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        kafka_header(self.headers(), name)
    }
}

impl RecordMeta for OwnedMessage {
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        kafka_header(self.headers(), name)
    }
}

fn kafka_header<'h, H: Headers>(headers: Option<&'h H>, name: &str) -> Option<&'h [u8]> {
    single(
        headers?
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| h.value),
    )
}

/// The one value of an iterator, when it has exactly one (a header
/// without a value counts, and is no tenant).
fn single<'a>(mut values: impl Iterator<Item = Option<&'a [u8]>>) -> Option<&'a [u8]> {
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;
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

    fn resolved(key: &str, data: &str, record: &impl RecordMeta) -> Option<Vec<u8>> {
        TenantKey::parse(key)
            .unwrap()
            .resolve(&event(data), record)
            .map(Cow::into_owned)
    }

    #[test]
    fn parses_and_prints_the_three_kinds() {
        for text in [
            "key",
            "header:X-Tenant",
            "data.whatsapp_account_id",
            "data.a.b",
        ] {
            assert_eq!(TenantKey::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "",
            "keys",
            "header:",
            "header:a b",
            "whatsapp_account_id",
            "data.",
            "data..x",
            "$data.x",
        ] {
            assert!(TenantKey::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn data_tenants_are_strings_or_numbers_read_once() {
        let k = "data.whatsapp_account_id";
        let none = &();
        assert_eq!(
            resolved(k, r#"{"whatsapp_account_id":"acct-1"}"#, none),
            Some(b"acct-1".to_vec())
        );
        assert_eq!(
            resolved(k, r#"{"whatsapp_account_id":"acct\u002d1"}"#, none),
            Some(b"acct-1".to_vec())
        );
        assert_eq!(
            resolved(k, r#"{"whatsapp_account_id":104996122399160}"#, none),
            Some(b"104996122399160".to_vec())
        );
        for data in [
            r#"{}"#,
            r#"{"whatsapp_account_id":null}"#,
            r#"{"whatsapp_account_id":true}"#,
            r#"{"whatsapp_account_id":{"id":"acct-1"}}"#,
            r#"{"whatsapp_account_id":["acct-1"]}"#,
            r#"{"whatsapp_account_id":"acct-1","whatsapp_account_id":"acct-2"}"#,
        ] {
            assert_eq!(resolved(k, data, none), None, "{data}");
        }
    }

    #[test]
    fn header_and_key_tenants() {
        let headers: &[(&str, &[u8])] = &[("X-Tenant", b"acct-1"), ("other", b"x")];
        let record = RecordParts {
            key: Some(b"acct-9"),
            headers,
        };
        assert_eq!(
            resolved("header:x-tenant", "{}", &record),
            Some(b"acct-1".to_vec())
        );
        assert_eq!(resolved("header:missing", "{}", &record), None);
        assert_eq!(resolved("key", "{}", &record), Some(b"acct-9".to_vec()));
        assert_eq!(resolved("key", "{}", &()), None);
        let twice: &[(&str, &[u8])] = &[("x-tenant", b"acct-1"), ("X-TENANT", b"acct-2")];
        let forged = RecordParts {
            key: None,
            headers: twice,
        };
        assert_eq!(resolved("header:x-tenant", "{}", &forged), None);

        let msg = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"acct-7".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(OwnedHeaders::new().insert(Header {
                key: "Tenant",
                value: Some("acct-3"),
            })),
        );
        assert_eq!(
            resolved("header:tenant", "{}", &msg),
            Some(b"acct-3".to_vec())
        );
        assert_eq!(resolved("key", "{}", &msg), Some(b"acct-7".to_vec()));
    }

    #[test]
    fn tenants_are_bounded_text() {
        assert!(Tenant::new("acct-1").is_ok());
        assert!(Tenant::new("Ünïcode tenant").is_ok());
        for bad in ["", "a\nb", "\u{7f}"] {
            assert!(Tenant::new(bad).is_err(), "{bad:?}");
        }
        assert!(Tenant::new(&"x".repeat(MAX_TENANT_LEN + 1)).is_err());
    }
}
