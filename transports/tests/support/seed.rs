//! Seed events for the transport tests: the library's generator
//! (`transports::seed`), wrapped into decoded events and deliveries.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use transports::{Delivery, Event, SourceRef};

pub use transports::seed::EVENT_TYPES;

/// The `data` of one event of `event_type`, number `seq` (deterministic:
/// the library's seed generator, seeded with `seq`).
pub fn data(event_type: &str, seq: u64) -> Value {
    transports::seed::SeedEvents::new(seq).data_of(event_type)
}

/// The content variations of `message.received` the docs list.
pub fn content_variations() -> Vec<Value> {
    vec![
        json!({"type": "image", "content": {"image": {"id": "media-id-123", "mime_type": "image/jpeg", "caption": "Here is the damaged product"}}}),
        json!({"type": "document", "content": {"document": {"id": "media-id-456", "mime_type": "application/pdf", "filename": "invoice.pdf"}}}),
        json!({"type": "audio", "content": {"audio": {"id": "media-id-789", "mime_type": "audio/ogg"}}}),
        json!({"type": "video", "content": {"video": {"id": "media-id-012", "mime_type": "video/mp4"}}}),
        json!({"type": "location", "content": {"location": {"latitude": 25.2048, "longitude": 55.2708, "name": "Dubai Mall", "address": "Financial Centre Rd, Dubai"}}}),
        json!({"type": "interactive", "content": {"interactive": {"type": "button_reply", "button_reply": {"id": "btn_yes", "title": "Yes, confirm"}}}}),
        json!({"type": "interactive", "content": {"interactive": {"type": "list_reply", "list_reply": {"id": "product_123", "title": "Red T-Shirt", "description": "Cotton, Size M"}}}}),
        json!({"type": "template", "content": {"template": {"name": "order_shipped", "language": "en", "components": []}}}),
    ]
}

/// A decoded event of `event_type` with `data`, as the dispatcher makes them.
pub fn event_with(event_type: &str, seq: u64, data: Value) -> Event {
    let record = json!({
        "event": event_type,
        "timestamp": "2026-05-16T12:00:00.000Z",
        "id": format!("evt_test_{seq}"),
        "data": data,
    });
    let bytes = serde_json::to_vec(&record).expect("json");
    Event::decode(
        Bytes::from(bytes),
        SourceRef {
            topic: "events".into(),
            partition: 0,
            offset: seq as i64,
        },
        None,
        16 << 20,
    )
    .expect("seed events decode")
}

/// One seed event of `event_type`.
pub fn event(event_type: &str, seq: u64) -> Event {
    event_with(event_type, seq, data(event_type, seq))
}

/// A delivery of `event` to `endpoint`, as a lane makes it.
pub fn delivery(event: Event, endpoint: &str) -> Delivery {
    Delivery::new(Arc::new(event), endpoint.into())
}
