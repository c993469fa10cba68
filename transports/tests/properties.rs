//! Property tests of event decoding: whatever bytes a producer writes,
//! `Event::decode` returns an event or an error and never panics, and an
//! event it returns gives every endpoint a valid envelope that carries the
//! producer's `data` byte for byte.
//!
//! 100,000 cases per property by default; `PROPTEST_CASES` sets another
//! number (the README has the longer run).

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::value::RawValue;
use transports::{Delivery, Event, SourceRef};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn source() -> SourceRef {
    SourceRef {
        topic: "events".into(),
        partition: 3,
        offset: 42,
    }
}

/// A JSON value, or something that nearly is one: what a field of a
/// producer's record may hold.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just(r#"{"a":{"b":[1,2,{"c":null}]},"d":"é\u00e9"}"#.to_owned()),
        Just(r#""message.received""#.to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        // Event types and ids: printable ASCII, quotes and backslashes included.
        "\"[ -~]{0,24}\"",
        // RFC 3339 and near misses.
        "\"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|z|[+-][0-9]{2}:[0-9]{2})?\"",
        // Any text, correctly escaped: unicode, control characters.
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        // Objects with odd contents.
        prop::collection::vec(("[a-z_]{1,8}", any::<String>()), 0..4).prop_map(|kv| {
            serde_json::to_string(&kv.into_iter().collect::<std::collections::BTreeMap<_, _>>()).unwrap()
        }),
    ]
}

/// A record built like an event, with fields missing, repeated, reordered,
/// or of the wrong kind, and then possibly damaged at one byte.
fn record() -> impl Strategy<Value = Vec<u8>> {
    let field = (
        prop_oneof![
            Just("event"),
            Just("data"),
            Just("timestamp"),
            Just("id"),
            Just("other")
        ],
        fragment(),
    );
    (
        prop::collection::vec(field, 0..6),
        prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(fields, damage)| {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let mut bytes = format!("{{{}}}", body.join(",")).into_bytes();
            if let Some((at, byte)) = damage {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes
        })
}

/// Decode, and check what an event promises.
fn decode_and_check(
    payload: Vec<u8>,
    record_ms: Option<i64>,
    max_bytes: usize,
) -> Result<(), TestCaseError> {
    let Ok(event) = Event::decode(Bytes::from(payload), source(), record_ms, max_bytes) else {
        return Ok(());
    };
    let event = Arc::new(event);
    let delivery = Delivery::new(event.clone(), "acme".into());
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        event: String,
        timestamp: String,
        webhook_id: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let envelope: Envelope<'_> = serde_json::from_slice(&delivery.body)
        .map_err(|e| TestCaseError::fail(format!("envelope is not JSON: {e}")))?;
    prop_assert_eq!(envelope.event.as_str(), event.event_type());
    prop_assert_eq!(envelope.timestamp.as_str(), event.timestamp());
    prop_assert_eq!(envelope.webhook_id.as_str(), "acme");
    prop_assert_eq!(envelope.data.get().as_bytes(), event.data());
    prop_assert_eq!(
        Some(delivery.id),
        transports::DeliveryId::parse(&delivery.id.to_string())
    );
    let _ = (event.id(), event.timestamp_ms());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // The faster generator: these tests want many cases, not crypto.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..256),
        record_ms in any::<Option<i64>>(),
        max_bytes in 0usize..1024,
    ) {
        decode_and_check(payload, record_ms, max_bytes)?;
    }

    #[test]
    fn event_shaped_records_never_panic_and_keep_data_verbatim(
        payload in record(),
        record_ms in any::<Option<i64>>(),
    ) {
        decode_and_check(payload, record_ms, 1 << 20)?;
    }
}
