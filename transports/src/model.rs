//! The delivery model: a decoded event, one delivery of it, its stable id.
//!
//! An [`Event`] keeps the producer's record bytes exactly as they arrived and
//! remembers where its parts lie inside them. Nothing is re-serialised:
//! `data` is handed to receivers byte for byte, and the envelope each endpoint
//! receives is spliced together from slices of the original record.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a record could not be decoded into an event. The reasons are a closed
/// set so that they can label metrics; the detail goes into the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("record has no value")]
    Empty,
    #[error("record is {size} bytes, over the {limit}-byte limit")]
    Oversized { size: usize, limit: usize },
    #[error("record is not UTF-8: {0}")]
    NotUtf8(String),
    #[error("record is not a JSON object: {0}")]
    NotJson(String),
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` has the wrong type: {detail}")]
    WrongType { field: &'static str, detail: String },
    #[error("field `{field}` is invalid: {detail}")]
    Invalid { field: &'static str, detail: String },
}

impl EventError {
    /// Every [`EventError::code`], so that metrics can show each at zero
    /// before the first record fails with it.
    pub const CODES: &'static [&'static str] = &[
        "empty",
        "oversized",
        "not_utf8",
        "not_json",
        "missing_field",
        "wrong_type",
        "invalid_field",
    ];

    /// A bounded label for metrics and the dead-letter `reason` header.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::Empty => "empty",
            EventError::Oversized { .. } => "oversized",
            EventError::NotUtf8(_) => "not_utf8",
            EventError::NotJson(_) => "not_json",
            EventError::MissingField(_) => "missing_field",
            EventError::WrongType { .. } => "wrong_type",
            EventError::Invalid { .. } => "invalid_field",
        }
    }
}

/// Where a record came from; part of the delivery id when the producer gave
/// no event id, and of the dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A decoded event: the record's bytes plus where its fields are.
#[derive(Debug, Clone)]
pub struct Event {
    payload: Bytes,
    event_type: Range<usize>,
    data: Range<usize>,
    id: Option<Range<usize>>,
    /// The event time as RFC 3339 text: a slice of the payload when the
    /// producer sent one, else formatted from the record timestamp.
    timestamp: Bytes,
    timestamp_ms: i64,
    pub source: SourceRef,
    /// W3C trace context taken from the record headers, passed on to receivers.
    pub traceparent: Option<Bytes>,
    /// The Kafka record's key, when it had a non-empty one: what an
    /// endpoint ordered by `key` orders on. Set by whoever read the record
    /// (the source, or a retry, spill or dead-letter topic that carried it).
    pub record_key: Option<Bytes>,
}

/// The fields routing needs, borrowed straight out of the record. Unknown
/// fields are ignored so producers can add to the envelope.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Longest event type accepted; real ones are a few dozen bytes.
const MAX_EVENT_TYPE_LEN: usize = 128;
/// Longest producer id accepted; it is hashed into the delivery id.
const MAX_ID_LEN: usize = 512;

impl Event {
    /// Decode one record value.
    ///
    /// `record_timestamp_ms` stands in for a missing `timestamp`. `max_bytes`
    /// bounds what one record may cost to hold in memory.
    pub fn decode(
        payload: Bytes,
        source: SourceRef,
        record_timestamp_ms: Option<i64>,
        max_bytes: usize,
    ) -> Result<Event, EventError> {
        if payload.is_empty() {
            return Err(EventError::Empty);
        }
        if payload.len() > max_bytes {
            return Err(EventError::Oversized {
                size: payload.len(),
                limit: max_bytes,
            });
        }
        let text = std::str::from_utf8(&payload).map_err(|e| EventError::NotUtf8(e.to_string()))?;
        let wire: Wire<'_> =
            serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?;

        let event = wire.event.ok_or(EventError::MissingField("event"))?;
        let event_type = string_token(text, event, "event")?;
        let name = &text[event_type.clone()];
        if name.is_empty() || name.len() > MAX_EVENT_TYPE_LEN || !name.bytes().all(is_name_byte) {
            return Err(EventError::Invalid {
                field: "event",
                detail: format!(
                    "{} is not an event type (1 to {MAX_EVENT_TYPE_LEN} of A-Z a-z 0-9 . _ - :)",
                    quote_excerpt(name)
                ),
            });
        }

        let data = wire.data.ok_or(EventError::MissingField("data"))?;
        if !data.get().starts_with('{') {
            return Err(EventError::WrongType {
                field: "data",
                detail: format!("expected an object, found {}", json_kind(data.get())),
            });
        }
        let data = offset_in(text, data.get());

        let id = match wire.id {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => {
                let range = string_token(text, raw, "id")?;
                if range.is_empty() || range.len() > MAX_ID_LEN {
                    return Err(EventError::Invalid {
                        field: "id",
                        detail: format!("must be 1 to {MAX_ID_LEN} bytes"),
                    });
                }
                Some(range)
            }
        };

        let (timestamp, timestamp_ms) =
            match wire.timestamp {
                Some(raw) if raw.get() != "null" => {
                    let range = string_token(text, raw, "timestamp")?;
                    let parsed = chrono::DateTime::parse_from_rfc3339(&text[range.clone()])
                        .map_err(|e| EventError::Invalid {
                            field: "timestamp",
                            detail: format!(
                                "{} is not RFC 3339: {e}",
                                quote_excerpt(&text[range.clone()])
                            ),
                        })?;
                    (payload.slice(range), parsed.timestamp_millis())
                }
                _ => {
                    let ms = record_timestamp_ms.unwrap_or_else(now_ms);
                    (Bytes::from(format_rfc3339_ms(ms)), ms)
                }
            };

        Ok(Event {
            event_type,
            data,
            id,
            timestamp,
            timestamp_ms,
            payload,
            source,
            traceparent: None,
            record_key: None,
        })
    }

    /// The event type, e.g. `message.received`.
    pub fn event_type(&self) -> &str {
        str_of(&self.payload[self.event_type.clone()])
    }

    /// The producer's event id, when it gave one.
    pub fn id(&self) -> Option<&str> {
        self.id.clone().map(|r| str_of(&self.payload[r]))
    }

    /// The event time as sent in the envelope (RFC 3339).
    pub fn timestamp(&self) -> &str {
        str_of(&self.timestamp)
    }

    /// The event time in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// The producer's `data` object, byte for byte.
    pub fn data(&self) -> &[u8] {
        &self.payload[self.data.clone()]
    }

    /// `data` as a shared slice of the record (no copy).
    pub fn data_bytes(&self) -> Bytes {
        self.payload.slice(self.data.clone())
    }

    /// The record value as the producer wrote it.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The envelope one endpoint receives:
    /// `{"event":…,"timestamp":…,"webhook_id":…,"data":…}` with `data`
    /// copied verbatim. `webhook_id` must be a config-validated endpoint id
    /// (no characters that need JSON escaping); it is escaped anyway.
    pub fn envelope(&self, webhook_id: &str) -> Bytes {
        let data = self.data();
        let mut out = BytesMut::with_capacity(
            data.len() + self.event_type.len() + self.timestamp.len() + webhook_id.len() + 56,
        );
        out.put_slice(b"{\"event\":\"");
        out.put_slice(self.event_type().as_bytes());
        out.put_slice(b"\",\"timestamp\":\"");
        out.put_slice(&self.timestamp);
        out.put_slice(b"\",\"webhook_id\":");
        put_json_string(&mut out, webhook_id);
        out.put_slice(b",\"data\":");
        out.put_slice(data);
        out.put_u8(b'}');
        out.freeze()
    }
}

/// The stable id of one (event, endpoint) pair: a name-based UUID (v5), the
/// same on every attempt and after any re-read of the source.
///
/// With a producer id it hashes (event type, producer id, endpoint), so a
/// producer's duplicate record gets the same id and receivers can drop it;
/// without, (topic, partition, offset, endpoint), which a re-read reproduces.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryId(uuid::Uuid);

/// Namespace of delivery ids, so they never collide with other v5 UUIDs.
const DELIVERY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_bytes([
    0x6b, 0x1f, 0x3c, 0x52, 0x9e, 0x0d, 0x4a, 0x8b, 0x93, 0x47, 0x2d, 0x61, 0xc5, 0x0e, 0x7f, 0x18,
]);

impl DeliveryId {
    pub fn derive(event: &Event, endpoint_id: &str) -> DeliveryId {
        // Fields are separated by NUL, which none of them may contain.
        let mut name = Vec::with_capacity(96);
        match event.id() {
            Some(id) => {
                name.extend_from_slice(b"event\0");
                name.extend_from_slice(event.event_type().as_bytes());
                name.push(0);
                name.extend_from_slice(id.as_bytes());
            }
            None => {
                let s = &event.source;
                name.extend_from_slice(b"record\0");
                name.extend_from_slice(s.topic.as_bytes());
                name.push(0);
                name.extend_from_slice(s.partition.to_string().as_bytes());
                name.push(0);
                name.extend_from_slice(s.offset.to_string().as_bytes());
            }
        }
        name.push(0);
        name.extend_from_slice(endpoint_id.as_bytes());
        DeliveryId(uuid::Uuid::new_v5(&DELIVERY_NAMESPACE, &name))
    }

    /// Parse a delivery id back (replay reads them from dead-letter headers).
    pub fn parse(text: &str) -> Option<DeliveryId> {
        uuid::Uuid::parse_str(text).ok().map(DeliveryId)
    }

    /// Formats into a stack buffer: no allocation.
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeliveryId({self})")
    }
}

/// One attempt's worth of work: an event, the endpoint it goes to, and the
/// envelope body, built once and reused by every attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Arc<Event>,
    pub endpoint_id: Arc<str>,
    pub id: DeliveryId,
    pub body: Bytes,
    /// 1 on the first attempt.
    pub attempt: u32,
}

impl Delivery {
    pub fn new(event: Arc<Event>, endpoint_id: Arc<str>) -> Delivery {
        let id = DeliveryId::derive(&event, &endpoint_id);
        let body = event.envelope(&endpoint_id);
        Delivery {
            event,
            endpoint_id,
            id,
            body,
            attempt: 1,
        }
    }
}

/// Longest part of a producer's value quoted in an error. The error goes to
/// a log line and a dead-letter header: quoting a whole 1 MiB field would
/// let one record multiply its size through both.
const QUOTED_CHARS: usize = 64;

/// `"value"` escaped, cut to [`QUOTED_CHARS`] characters with its full
/// length noted when longer.
fn quote_excerpt(value: &str) -> String {
    let mut chars = value.char_indices();
    match chars.nth(QUOTED_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

/// The range of a JSON string token's contents (without quotes). Strings with
/// escapes are refused: ids, types and timestamps never need them, and
/// refusing keeps every later use a plain slice of the record.
fn string_token(
    text: &str,
    raw: &RawValue,
    field: &'static str,
) -> Result<Range<usize>, EventError> {
    let token = raw.get();
    if !token.starts_with('"') {
        return Err(EventError::WrongType {
            field,
            detail: format!("expected a string, found {}", json_kind(token)),
        });
    }
    if token.contains('\\') {
        return Err(EventError::Invalid {
            field,
            detail: "escape sequences are not allowed here".into(),
        });
    }
    let range = offset_in(text, token);
    Ok(range.start + 1..range.end - 1)
}

/// Where `part` (a sub-slice of `whole`) lies inside `whole`.
fn offset_in(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

fn json_kind(token: &str) -> &'static str {
    match token.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Every slice this is called on was checked as UTF-8 at decode time and cut
/// at ASCII boundaries; the fallback only exists so that this cannot panic.
fn str_of(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

fn put_json_string(out: &mut BytesMut, s: &str) {
    out.put_u8(b'"');
    for ch in s.chars() {
        match ch {
            '"' => out.put_slice(b"\\\""),
            '\\' => out.put_slice(b"\\\\"),
            c if (c as u32) < 0x20 => out.put_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.put_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.put_u8(b'"');
}

/// `2026-05-16T12:00:00.000Z`, the seeds' envelope timestamp format.
pub fn format_rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_lists_every_code() {
        let every = [
            EventError::Empty,
            EventError::Oversized { size: 2, limit: 1 },
            EventError::NotUtf8(String::new()),
            EventError::NotJson(String::new()),
            EventError::MissingField("data"),
            EventError::WrongType {
                field: "data",
                detail: String::new(),
            },
            EventError::Invalid {
                field: "id",
                detail: String::new(),
            },
        ];
        // A new variant must be added above (the match makes it fail to
        // compile until it is) and to CODES.
        for e in &every {
            match e {
                EventError::Empty
                | EventError::Oversized { .. }
                | EventError::NotUtf8(_)
                | EventError::NotJson(_)
                | EventError::MissingField(_)
                | EventError::WrongType { .. }
                | EventError::Invalid { .. } => {}
            }
        }
        let codes: Vec<&str> = every.iter().map(EventError::code).collect();
        assert_eq!(codes, EventError::CODES);
    }

    fn src() -> SourceRef {
        SourceRef {
            topic: "events".into(),
            partition: 3,
            offset: 42,
        }
    }

    fn decode(s: &str) -> Result<Event, EventError> {
        Event::decode(
            Bytes::copy_from_slice(s.as_bytes()),
            src(),
            Some(1_747_396_800_000),
            1 << 20,
        )
    }

    #[test]
    fn decodes_fields_without_copying_data() {
        let raw = r#"{"event":"message.received","timestamp":"2026-05-16T12:00:00.000Z","id":"evt-1","data":{"message_id":"wamid.X","text":"héllo \"quoted\"","n":1.50}}"#;
        let ev = decode(raw).unwrap();
        assert_eq!(ev.event_type(), "message.received");
        assert_eq!(ev.timestamp(), "2026-05-16T12:00:00.000Z");
        assert_eq!(ev.id(), Some("evt-1"));
        assert_eq!(
            ev.data(),
            r#"{"message_id":"wamid.X","text":"héllo \"quoted\"","n":1.50}"#.as_bytes()
        );
        // `1.50` would become `1.5` if anything re-serialised the data.
        assert!(std::str::from_utf8(ev.data())
            .unwrap()
            .ends_with("\"n\":1.50}"));
        assert_eq!(ev.timestamp_ms(), 1_778_932_800_000);
    }

    #[test]
    fn missing_timestamp_uses_record_time() {
        let ev = decode(r#"{"event":"contact.created","data":{}}"#).unwrap();
        assert_eq!(ev.timestamp(), "2025-05-16T12:00:00.000Z");
        assert_eq!(ev.timestamp_ms(), 1_747_396_800_000);
        assert_eq!(ev.id(), None);
    }

    #[test]
    fn envelope_is_valid_json_with_verbatim_data() {
        let raw = r#"{"data":{"b":[1,2,{"c":null}],"a":"x"},"event":"message.sent","extra":true}"#;
        let ev = decode(raw).unwrap();
        let body = ev.envelope("acme-crm");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["event"], "message.sent");
        assert_eq!(v["webhook_id"], "acme-crm");
        assert_eq!(v["timestamp"], "2025-05-16T12:00:00.000Z");
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.ends_with(r#","data":{"b":[1,2,{"c":null}],"a":"x"}}"#),
            "{text}"
        );
    }

    #[test]
    fn rejects_bad_records_with_reasons() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"\xff\xfe garbage", "not_utf8"),
            (b"{\"event\":\"message.sent\",\"data\":{", "not_json"),
            (b"[1,2]", "not_json"),
            (b"{\"data\":{}}", "missing_field"),
            (b"{\"event\":\"a.b\"}", "missing_field"),
            (b"{\"event\":7,\"data\":{}}", "wrong_type"),
            (b"{\"event\":\"a.b\",\"data\":[1]}", "wrong_type"),
            (b"{\"event\":\"a.b\",\"data\":\"x\"}", "wrong_type"),
            (b"{\"event\":\"has space\",\"data\":{}}", "invalid_field"),
            (b"{\"event\":\"\",\"data\":{}}", "invalid_field"),
            (b"{\"event\":\"a\\u0062\",\"data\":{}}", "invalid_field"),
            (
                b"{\"event\":\"a.b\",\"timestamp\":\"yesterday\",\"data\":{}}",
                "invalid_field",
            ),
            (
                b"{\"event\":\"a.b\",\"timestamp\":5,\"data\":{}}",
                "wrong_type",
            ),
            (b"{\"event\":\"a.b\",\"id\":{},\"data\":{}}", "wrong_type"),
        ];
        for (raw, code) in cases {
            let err = Event::decode(Bytes::copy_from_slice(raw), src(), None, 1 << 20)
                .expect_err(&String::from_utf8_lossy(raw));
            assert_eq!(
                err.code(),
                *code,
                "{:?}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
        let big = format!(
            "{{\"event\":\"a.b\",\"data\":{{\"x\":\"{}\"}}}}",
            "y".repeat(2000)
        );
        let err = Event::decode(Bytes::from(big), src(), None, 1024).unwrap_err();
        assert_eq!(err.code(), "oversized");
        assert!(err.to_string().contains("1024"));
    }

    /// Finding 7 of the security review: an invalid event type or timestamp
    /// was quoted whole in the error that goes to a log line and to the
    /// dead letter's `dlq.error` header: 1 MiB in, 2 MiB or more out.
    #[test]
    fn huge_invalid_fields_are_quoted_short() {
        let huge = "x ".repeat(512 * 1024);
        for raw in [
            format!(r#"{{"event":"{huge}","data":{{}}}}"#),
            format!(r#"{{"event":"a.b","timestamp":"{huge}","data":{{}}}}"#),
        ] {
            assert!(raw.len() > 1 << 20);
            let err = Event::decode(Bytes::from(raw), src(), None, 2 << 20).unwrap_err();
            assert_eq!(err.code(), "invalid_field");
            let text = err.to_string();
            assert!(text.len() < 300, "{} bytes: {}", text.len(), &text[..300]);
            assert!(text.contains("1048576 bytes"), "{text}");
        }
        assert_eq!(quote_excerpt("a\"b"), r#""a\"b""#);
        assert_eq!(
            quote_excerpt(&"é".repeat(70))
                .chars()
                .filter(|c| *c == 'é')
                .count(),
            64
        );
    }

    /// Finding 8: serde refuses a second `event`, `data`, `id` or
    /// `timestamp`, so a producer cannot show the router one event type and
    /// receivers (which read the last key) another.
    #[test]
    fn duplicate_top_level_fields_are_refused() {
        for raw in [
            r#"{"event":"a.b","event":"c.d","data":{}}"#,
            r#"{"event":"a.b","data":{"t":"x"},"data":{"t":"y"}}"#,
            r#"{"event":"a.b","id":"1","id":"2","data":{}}"#,
        ] {
            let err = decode(raw).unwrap_err();
            assert_eq!(err.code(), "not_json", "{raw}");
            assert!(err.to_string().contains("duplicate field"), "{err}");
        }
    }

    #[test]
    fn delivery_id_is_stable_and_distinct() {
        let a = decode(r#"{"event":"message.read","id":"e1","data":{}}"#).unwrap();
        let mut a2 = decode(r#"{"id":"e1","event":"message.read","data":{"other":1}}"#).unwrap();
        a2.source.offset = 99;
        // The producer's id wins over the record position: a duplicate record is recognised.
        assert_eq!(
            DeliveryId::derive(&a, "ep1"),
            DeliveryId::derive(&a2, "ep1")
        );
        assert_ne!(DeliveryId::derive(&a, "ep1"), DeliveryId::derive(&a, "ep2"));

        let b = decode(r#"{"event":"message.read","data":{}}"#).unwrap();
        let mut b_moved = b.clone();
        b_moved.source.offset += 1;
        assert_eq!(
            DeliveryId::derive(&b, "ep1"),
            DeliveryId::derive(&b.clone(), "ep1")
        );
        assert_ne!(
            DeliveryId::derive(&b, "ep1"),
            DeliveryId::derive(&b_moved, "ep1")
        );

        let id = DeliveryId::derive(&b, "ep1");
        let mut buf = [0u8; 36];
        assert_eq!(DeliveryId::parse(id.encode(&mut buf)), Some(id));
        assert_eq!(id.to_string().len(), 36);
    }
}
