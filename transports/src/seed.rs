//! Realistic events of every type the platform documents, shaped like the
//! payloads in its public webhook docs. Used by the demo, the tests and the
//! load tester, so that all of them exercise the same shapes and sizes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Every documented event type (`message.incoming` is the older name of
/// `message.received`, still produced by some integrations).
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

/// What one contact goes through, event by event, in the order the
/// platform's webhook docs give ("event lifecycle diagram": first message,
/// AI reply, the customer again, a human agent, idle close), and two
/// shorter variants: a message that fails, and a transfer to an agent.
/// Ordered delivery per key is tested and measured with these.
pub const LIFECYCLES: &[&[&str]] = &[
    &[
        "contact.created",
        "conversation.opened",
        "message.received",
        "message.sent",
        "message.delivered",
        "message.read",
        "message.received",
        "message.sent",
        "message.delivered",
        "conversation.closed",
    ],
    &[
        "contact.updated",
        "conversation.opened",
        "message.sent",
        "message.failed",
        "conversation.closed",
    ],
    &[
        "conversation.opened",
        "message.received",
        "transfer.created",
        "message.sent",
        "message.delivered",
        "conversation.closed",
    ],
];

/// The WhatsApp accounts events are spread over (for filter examples).
pub const ACCOUNTS: &[&str] = &["acct-1", "acct-2", "acct-3"];

const NAMES: &[&str] = &[
    "John Doe",
    "Amira Haddad",
    "Wei Chen",
    "Priya Nair",
    "Lucas Silva",
];
const TEXTS: &[&str] = &[
    "Hi, I need help with my order",
    "Hello, can you help me?",
    "Is ORD-78901 shipped yet?",
    "Thanks, that solved it! 🎉",
    "Can I change the delivery address to \"Financial Centre Rd\"?",
];

/// Deterministic for a given seed, so runs can be compared.
pub struct SeedEvents {
    rng: StdRng,
    seq: u64,
    run: String,
}

impl SeedEvents {
    pub fn new(seed: u64) -> SeedEvents {
        SeedEvents {
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            run: format!("{seed:x}"),
        }
    }

    /// The next event, cycling through every type. Returns its type, its
    /// unique `id`, and the record value.
    pub fn next_event(&mut self, now_ms: i64) -> (&'static str, String, Vec<u8>) {
        let event_type = EVENT_TYPES[(self.seq % EVENT_TYPES.len() as u64) as usize];
        let (id, value) = self.event(event_type, now_ms);
        (event_type, id, value)
    }

    /// One record of `event_type`, stamped with `now_ms`.
    pub fn event(&mut self, event_type: &str, now_ms: i64) -> (String, Vec<u8>) {
        self.seq += 1;
        let id = format!("evt_{}_{}", self.run, self.seq);
        let ts = crate::model::format_rfc3339_ms(now_ms);
        let data = self.data(event_type, &ts);
        let record = json!({ "event": event_type, "timestamp": ts, "id": id, "data": data });
        (id, serde_json::to_vec(&record).unwrap_or_default())
    }

    /// The `step`-th event (from 0) of `contact`'s lifecycle: its `data`
    /// carries `contact_id` and `seq` (the step), so that a receiver can
    /// tell the order it got them in. Returns its `id` and the record value.
    pub fn contact_event(
        &mut self,
        event_type: &str,
        contact: &str,
        step: usize,
        now_ms: i64,
    ) -> (String, Vec<u8>) {
        self.seq += 1;
        let id = format!("evt_{}_{}", self.run, self.seq);
        let ts = crate::model::format_rfc3339_ms(now_ms);
        let mut data = self.data(event_type, &ts);
        if let Some(fields) = data.as_object_mut() {
            fields.insert("contact_id".into(), contact.into());
            fields.insert("seq".into(), step.into());
        }
        let record = json!({ "event": event_type, "timestamp": ts, "id": id, "data": data });
        (id, serde_json::to_vec(&record).unwrap_or_default())
    }

    /// Only the `data` object of the next event of `event_type`.
    pub fn data_of(&mut self, event_type: &str) -> Value {
        self.seq += 1;
        let ts = crate::model::format_rfc3339_ms(1_778_932_800_000);
        self.data(event_type, &ts)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.random_range(0..from.len())]
    }

    fn phone(&mut self) -> String {
        format!("+9182{:08}", self.rng.random_range(0..100_000_000u32))
    }

    fn uuid(&mut self) -> String {
        uuid::Uuid::from_u128(self.rng.random()).to_string()
    }

    fn data(&mut self, event_type: &str, ts: &str) -> Value {
        let message_id = format!("wamid.{}{:06}", self.run, self.seq);
        let account = self.pick(ACCOUNTS);
        let phone = self.phone();
        let name = self.pick(NAMES);
        let text = self.pick(TEXTS);
        match event_type {
            "message.received" | "message.incoming" => json!({
                "message_id": message_id, "from": phone, "contact_id": self.uuid(), "contact_name": name,
                "type": "text", "content": { "text": text }, "timestamp": ts, "whatsapp_account_id": account,
            }),
            "message.sent" => json!({
                "message_id": message_id, "to": phone, "type": "text", "content": { "text": text },
                "status": "sent", "timestamp": ts, "sender_id": null, "is_ai": true,
                "agent_id": self.uuid(), "whatsapp_account_id": account,
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
                "contact_id": self.uuid(), "phone": phone, "name": name, "channel": "whatsapp", "created_at": ts,
            }),
            "contact.updated" => json!({
                "contact_id": self.uuid(), "phone": phone, "name": name,
                "labels": ["vip", "returning-customer"], "updated_at": ts,
            }),
            "conversation.opened" => json!({
                "conversation_id": self.uuid(), "contact_id": self.uuid(), "contact_phone": phone,
                "contact_name": name, "channel": "whatsapp", "is_ai_handling": true, "ai_agent_id": self.uuid(),
            }),
            "conversation.closed" => json!({
                "conversation_id": self.uuid(), "contact_id": self.uuid(), "channel": "whatsapp",
                "closed_by": "auto", "summary": "Customer asked about ORD-12345; AI agent shared tracking.",
                "intent_tag": "support", "sentiment": "positive", "message_count": 8, "duration_minutes": 12,
            }),
            "campaign.completed" => {
                let total = self.rng.random_range(100..5000u32);
                let failed = total / 60;
                json!({
                    "id": self.uuid(), "name": "May Promotion", "total": total, "sent": total - failed,
                    "delivered": total - 2 * failed, "read": total / 2, "failed": failed,
                })
            }
            "transfer.created" => json!({
                "contact_id": self.uuid(), "from_agent_id": null, "to_agent_id": self.uuid(),
                "to_team_id": self.uuid(), "notes": "Customer asking about refund",
            }),
            _ => json!({ "note": "unknown event type" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, SourceRef};
    use bytes::Bytes;

    #[test]
    fn every_type_decodes_with_unique_ids() {
        let mut gen = SeedEvents::new(7);
        let mut ids = std::collections::HashSet::new();
        for i in 0..EVENT_TYPES.len() * 3 {
            let (ty, id, value) = gen.next_event(1_700_000_000_000 + i as i64);
            let src = SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: i as i64,
            };
            let ev = Event::decode(Bytes::from(value), src, None, 1 << 20).unwrap();
            assert_eq!(ev.event_type(), ty);
            assert_eq!(ev.id(), Some(id.as_str()));
            assert!(ids.insert(id));
        }
    }
}
