//! Events of every documented type, with the shapes of
//! `dispatcher/src/seed.rs` (the platform's public webhook docs). Duplicated
//! here, deterministic and small, because transports do not depend on the
//! dispatcher.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use transports::{Delivery, Event, SourceRef};

/// Every documented event type.
pub const EVENT_TYPES: &[&str] = &[
    "message.received",
    "message.incoming",
    "message.sent",
    "message.delivered",
    "message.read",
    "message.failed",
    "contact.created",
    "contact.updated",
    "conversation.opened",
    "conversation.closed",
    "campaign.completed",
    "transfer.created",
];

const NAMES: &[&str] = &["John Doe", "Amira Haddad", "Wei Chen", "Priya Nair"];
const TEXTS: &[&str] = &[
    "Hi, I need help with my order",
    "Is ORD-78901 shipped yet?",
    "Thanks, that solved it! 🎉",
    "Can I change the delivery address to \"Financial Centre Rd\"?",
];

fn uuid(seq: u64, salt: u64) -> String {
    uuid::Uuid::from_u128(((seq as u128) << 64) | salt as u128).to_string()
}

/// The `data` of one event of `event_type`, number `seq`.
pub fn data(event_type: &str, seq: u64) -> Value {
    let ts = "2026-05-16T12:00:00.000Z";
    let message_id = format!("wamid.test{seq:06}");
    let account = ["acct-1", "acct-2", "acct-3"][seq as usize % 3];
    let phone = format!("+9182{:08}", seq * 7919 % 100_000_000);
    let name = NAMES[seq as usize % NAMES.len()];
    let text = TEXTS[seq as usize % TEXTS.len()];
    match event_type {
        "message.received" | "message.incoming" => json!({
            "message_id": message_id, "from": phone, "contact_id": uuid(seq, 1), "contact_name": name,
            "type": "text", "content": { "text": text }, "timestamp": ts, "whatsapp_account_id": account,
        }),
        "message.sent" => json!({
            "message_id": message_id, "to": phone, "type": "text", "content": { "text": text },
            "status": "sent", "timestamp": ts, "sender_id": null, "is_ai": true,
            "agent_id": uuid(seq, 2), "whatsapp_account_id": account,
        }),
        "message.delivered" | "message.read" => json!({
            "message_id": message_id, "status": event_type.trim_start_matches("message."),
            "timestamp": ts, "recipient_id": phone, "whatsapp_account_id": account,
        }),
        "message.failed" => json!({
            "message_id": message_id, "status": "failed", "timestamp": ts, "recipient_id": phone,
            "error": { "code": 131047, "message": "Re-engagement message - more than 24 hours have passed since the customer last replied" },
            "whatsapp_account_id": account,
        }),
        "contact.created" => json!({
            "contact_id": uuid(seq, 3), "phone": phone, "name": name, "channel": "whatsapp", "created_at": ts,
        }),
        "contact.updated" => json!({
            "contact_id": uuid(seq, 3), "phone": phone, "name": name,
            "labels": ["vip", "returning-customer"], "updated_at": ts,
        }),
        "conversation.opened" => json!({
            "conversation_id": uuid(seq, 4), "contact_id": uuid(seq, 1), "contact_phone": phone,
            "contact_name": name, "channel": "whatsapp", "is_ai_handling": true, "ai_agent_id": uuid(seq, 5),
        }),
        "conversation.closed" => json!({
            "conversation_id": uuid(seq, 4), "contact_id": uuid(seq, 1), "channel": "whatsapp",
            "closed_by": "auto", "summary": "Customer asked about ORD-12345; AI agent shared tracking.",
            "intent_tag": "support", "sentiment": "positive", "message_count": 8, "duration_minutes": 12,
        }),
        "campaign.completed" => json!({
            "id": uuid(seq, 6), "name": "May Promotion", "total": 1000, "sent": 985,
            "delivered": 970, "read": 650, "failed": 15,
        }),
        "transfer.created" => json!({
            "contact_id": uuid(seq, 1), "from_agent_id": null, "to_agent_id": uuid(seq, 7),
            "to_team_id": uuid(seq, 8), "notes": "Customer asking about refund",
        }),
        _ => json!({ "note": "unknown event type" }),
    }
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
