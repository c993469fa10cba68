//! Slack messages from events: a `text` fallback plus Block Kit blocks.
//!
//! This module owns what a Slack channel shows for each event type (who,
//! what, when, the message text or error, campaign numbers, transfer notes),
//! a generic rendering for types it does not know (the top-level `data`
//! fields), the per-endpoint [`Template`] rendering, and keeping every
//! message inside Slack's limits:
//!
//! | limit | value |
//! |---|---|
//! | blocks per message | [`MAX_BLOCKS`] (50) |
//! | section text | [`MAX_SECTION_TEXT`] (3,000) |
//! | section fields | [`MAX_FIELDS`] (10) of [`MAX_FIELD_TEXT`] (2,000) each |
//! | header text | [`MAX_HEADER_TEXT`] (150) |
//! | context elements | [`MAX_CONTEXT_ELEMENTS`] (10) |
//! | `text` fallback | [`MAX_FALLBACK_TEXT`] (3,000, our choice; Slack truncates at 40,000) |
//!
//! Lengths are counted in UTF-16 code units, which is never less than the
//! character count Slack documents, so a text that fits here fits there.
//! Longer texts are cut on a character boundary (never inside an `&amp;`
//! escape or a `<...>` control sequence) and end with `…`. Blocks past the
//! limit are dropped, and a context line says how much is not shown.
//!
//! Text from events is escaped for mrkdwn (`&`, `<`, `>`), so an event cannot
//! mention `@channel`, forge links or break the markup. Header text is
//! `plain_text`, which Slack does not parse, so it is not escaped.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::template::Template;
use crate::Delivery;

/// Most blocks in one message.
pub const MAX_BLOCKS: usize = 50;
/// Longest section `text`.
pub const MAX_SECTION_TEXT: usize = 3000;
/// Most fields in one section.
pub const MAX_FIELDS: usize = 10;
/// Longest text of one section field.
pub const MAX_FIELD_TEXT: usize = 2000;
/// Longest header text (`plain_text`).
pub const MAX_HEADER_TEXT: usize = 150;
/// Most elements in one context block.
pub const MAX_CONTEXT_ELEMENTS: usize = 10;
/// Longest context element text.
pub const MAX_CONTEXT_TEXT: usize = 3000;
/// Longest top-level `text` (notification and fallback).
pub const MAX_FALLBACK_TEXT: usize = 3000;

/// The Slack message for one delivery, as JSON bytes ready to POST.
pub fn render(delivery: &Delivery, template: Option<&Template>) -> Bytes {
    // Serialising a `Value` cannot fail (string keys only); the fallback
    // keeps this free of panics all the same.
    let value = render_value(delivery, template);
    Bytes::from(serde_json::to_vec(&value).unwrap_or_else(|_| b"{\"text\":\"\"}".to_vec()))
}

/// The Slack message for one delivery, as a JSON value.
pub fn render_value(delivery: &Delivery, template: Option<&Template>) -> Value {
    let event = &delivery.event;
    // `data` was checked to be a JSON object when the event was decoded;
    // an unreadable one renders as an event without fields.
    let data: Map<String, Value> = serde_json::from_slice(event.data()).unwrap_or_default();
    let ctx = Ctx {
        event_type: event.event_type(),
        timestamp: event.timestamp(),
        data: &data,
    };
    let mut msg = Message::default();
    match template {
        Some(template) => templated(&mut msg, template, delivery, &ctx),
        None => by_type(&mut msg, &ctx),
    }
    msg.context(vec![ctx.when_line(), ids_line(&ctx)]);
    msg.finish()
}

/// What every rendering reads from.
struct Ctx<'a> {
    event_type: &'a str,
    timestamp: &'a str,
    data: &'a Map<String, Value>,
}

impl Ctx<'_> {
    /// The value at a dotted path below `data`.
    fn get(&self, path: &str) -> Option<&Value> {
        lookup(self.data, path)
    }

    /// The text of the first path that has a non-empty value.
    fn text(&self, paths: &[&str]) -> Option<String> {
        paths
            .iter()
            .filter_map(|p| self.get(p))
            .filter_map(value_text)
            .find(|s| !s.is_empty())
    }

    /// `*message.received* · <date>`: what and when, in the reader's time zone.
    fn when_line(&self) -> String {
        let when = match chrono::DateTime::parse_from_rfc3339(self.timestamp) {
            // Slack shows the date in each reader's own time zone, and the
            // text after `|` to clients that cannot.
            Ok(t) => format!(
                "<!date^{}^{{date_short_pretty}} at {{time_secs}}|{}>",
                t.timestamp(),
                esc(self.timestamp)
            ),
            Err(_) => esc(self.timestamp).into_owned(),
        };
        format!("*{}* · {when}", esc(self.event_type))
    }
}

/// The ids worth quoting to find the event elsewhere.
fn ids_line(ctx: &Ctx<'_>) -> String {
    let mut parts = Vec::new();
    for (label, path) in [
        ("message", "message_id"),
        ("conversation", "conversation_id"),
        ("contact", "contact_id"),
        ("campaign", "id"),
    ] {
        if label == "campaign" && ctx.event_type != "campaign.completed" {
            continue;
        }
        if let Some(id) = ctx.text(&[path]) {
            parts.push(format!("{label} `{}`", esc(&id)));
        }
    }
    if let Some(account) = ctx.text(&["whatsapp_account_id"]) {
        parts.push(format!("account `{}`", esc(&account)));
    }
    parts.join(" · ")
}

fn lookup<'v>(data: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let mut parts = path.split('.');
    let mut current = data.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A JSON value as a reader would want it: strings as they are, numbers and
/// booleans as written, lists of scalars comma-separated, anything else as
/// compact JSON. `None` for `null`.
pub(crate) fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) if items.iter().all(|v| !v.is_array() && !v.is_object()) => Some(
            items
                .iter()
                .map(|v| value_text(v).unwrap_or_else(|| "null".into()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

fn by_type(msg: &mut Message, ctx: &Ctx<'_>) {
    match ctx.event_type {
        "message.received" | "message.incoming" => message_received(msg, ctx),
        "message.sent" => message_sent(msg, ctx),
        "message.delivered" | "message.read" => message_status(msg, ctx),
        "message.failed" => message_failed(msg, ctx),
        "contact.created" | "contact.updated" => contact(msg, ctx),
        "conversation.opened" => conversation_opened(msg, ctx),
        "conversation.closed" => conversation_closed(msg, ctx),
        "campaign.completed" => campaign_completed(msg, ctx),
        "transfer.created" => transfer_created(msg, ctx),
        _ => generic(msg, ctx),
    }
}

fn message_received(msg: &mut Message, ctx: &Ctx<'_>) {
    let who = ctx
        .text(&["contact_name", "from"])
        .unwrap_or_else(|| "a customer".into());
    msg.header(&format!("💬 New message from {who}"));
    let content = message_content(ctx);
    msg.fallback_detail(content.as_deref());
    if let Some(text) = &content {
        msg.section(quote(text));
    }
    msg.fields(&[
        ("From", ctx.text(&["from"])),
        ("Contact", ctx.text(&["contact_name"])),
        ("Type", ctx.text(&["type"])),
        ("Channel", ctx.text(&["channel"])),
    ]);
}

fn message_sent(msg: &mut Message, ctx: &Ctx<'_>) {
    let to = ctx.text(&["to"]).unwrap_or_else(|| "a customer".into());
    msg.header(&format!("📤 Message sent to {to}"));
    let content = message_content(ctx);
    msg.fallback_detail(content.as_deref());
    if let Some(text) = &content {
        msg.section(quote(text));
    }
    let by = if ctx.get("is_ai").and_then(Value::as_bool) == Some(true) {
        Some(match ctx.text(&["agent_id"]) {
            Some(id) => format!("AI agent {id}"),
            None => "AI agent".into(),
        })
    } else {
        ctx.text(&["sender_id"]).map(|id| format!("agent {id}"))
    };
    msg.fields(&[
        ("To", ctx.text(&["to"])),
        ("Sent by", by),
        ("Type", ctx.text(&["type"])),
        ("Status", ctx.text(&["status"])),
        ("Channel", ctx.text(&["channel"])),
    ]);
}

fn message_status(msg: &mut Message, ctx: &Ctx<'_>) {
    let read = ctx.event_type == "message.read";
    let who = ctx
        .text(&["recipient_id", "to"])
        .unwrap_or_else(|| "the recipient".into());
    msg.header(&if read {
        format!("👀 Message read by {who}")
    } else {
        format!("✅ Message delivered to {who}")
    });
    msg.fields(&[
        ("Recipient", ctx.text(&["recipient_id", "to"])),
        ("Status", ctx.text(&["status"])),
        ("Message", ctx.text(&["message_id"])),
    ]);
}

fn message_failed(msg: &mut Message, ctx: &Ctx<'_>) {
    let who = ctx
        .text(&["recipient_id", "to"])
        .unwrap_or_else(|| "a customer".into());
    msg.header(&format!("⚠️ Message to {who} failed"));
    let code = ctx.text(&["error.code", "error_code"]);
    let message = ctx.text(&["error.message", "error_message", "error"]);
    let detail = match (&code, &message) {
        (Some(code), Some(message)) => format!("Error {code}: {message}"),
        (Some(code), None) => format!("Error {code}"),
        (None, Some(message)) => message.clone(),
        (None, None) => "No error detail was given".into(),
    };
    msg.fallback_detail(Some(&detail));
    msg.section(match (&code, &message) {
        (Some(code), Some(message)) => format!("*Error {}*: {}", esc(code), esc(message)),
        (Some(code), None) => format!("*Error {}*", esc(code)),
        _ => esc(&detail).into_owned(),
    });
    msg.fields(&[
        ("Recipient", ctx.text(&["recipient_id", "to"])),
        ("Message", ctx.text(&["message_id"])),
    ]);
}

fn contact(msg: &mut Message, ctx: &Ctx<'_>) {
    let name = ctx
        .text(&["name", "contact_name", "phone", "phone_number"])
        .unwrap_or_else(|| "unnamed".into());
    if ctx.event_type == "contact.created" {
        msg.header(&format!("👤 New contact: {name}"));
    } else {
        msg.header(&format!("✏️ Contact updated: {name}"));
    }
    msg.fields(&[
        ("Name", ctx.text(&["name", "contact_name"])),
        ("Phone", ctx.text(&["phone", "phone_number"])),
        ("Channel", ctx.text(&["channel"])),
        ("Source", ctx.text(&["source"])),
        ("Labels", ctx.text(&["labels"])),
        ("Tags", ctx.text(&["tags"])),
        ("Stage", ctx.text(&["stage"])),
    ]);
}

fn conversation_opened(msg: &mut Message, ctx: &Ctx<'_>) {
    let who = ctx
        .text(&["contact_name", "contact_phone"])
        .unwrap_or_else(|| "a customer".into());
    msg.header(&format!("🟢 Conversation opened with {who}"));
    let handler = match ctx.get("is_ai_handling").and_then(Value::as_bool) {
        Some(true) => Some(match ctx.text(&["ai_agent_id"]) {
            Some(id) => format!("AI agent {id}"),
            None => "AI agent".into(),
        }),
        Some(false) => Some("a team member".into()),
        None => None,
    };
    msg.fields(&[
        ("Contact", ctx.text(&["contact_name"])),
        ("Phone", ctx.text(&["contact_phone"])),
        ("Channel", ctx.text(&["channel"])),
        ("Handled by", handler),
    ]);
}

fn conversation_closed(msg: &mut Message, ctx: &Ctx<'_>) {
    let who = ctx.text(&["contact_name", "contact_phone"]);
    msg.header(&match who {
        Some(who) => format!("🔴 Conversation with {who} closed"),
        None => "🔴 Conversation closed".into(),
    });
    let summary = ctx.text(&["summary"]);
    msg.fallback_detail(summary.as_deref());
    if let Some(summary) = &summary {
        msg.section(format!("*Summary*\n{}", quote(summary)));
    }
    msg.fields(&[
        ("Closed by", ctx.text(&["closed_by"])),
        ("Channel", ctx.text(&["channel"])),
        ("Intent", ctx.text(&["intent_tag"])),
        ("Sentiment", ctx.text(&["sentiment"])),
        ("Messages", ctx.text(&["message_count"])),
        (
            "Duration",
            ctx.text(&["duration_minutes"]).map(|m| format!("{m} min")),
        ),
    ]);
}

fn campaign_completed(msg: &mut Message, ctx: &Ctx<'_>) {
    let name = ctx.text(&["name"]).unwrap_or_else(|| "unnamed".into());
    msg.header(&format!("📣 Campaign completed: {name}"));
    let total = ctx.get("total").and_then(Value::as_f64);
    let count = |key: &str| {
        let n = ctx.get(key)?;
        let text = value_text(n)?;
        Some(match (n.as_f64(), total) {
            (Some(n), Some(total)) if total > 0.0 => {
                format!("{text} ({:.1} %)", n * 100.0 / total)
            }
            _ => text,
        })
    };
    let numbers = [
        ("Total", ctx.text(&["total"])),
        ("Sent", count("sent")),
        ("Delivered", count("delivered")),
        ("Read", count("read")),
        ("Failed", count("failed")),
    ];
    let summary: Vec<String> = numbers
        .iter()
        .filter_map(|(label, v)| v.as_ref().map(|v| format!("{label} {v}")))
        .collect();
    msg.fallback_detail(Some(&summary.join(", ")));
    msg.fields(&numbers);
}

fn transfer_created(msg: &mut Message, ctx: &Ctx<'_>) {
    msg.header("🔀 Conversation transferred");
    let notes = ctx.text(&["notes"]);
    msg.fallback_detail(notes.as_deref());
    if let Some(notes) = &notes {
        msg.section(format!("*Notes*\n{}", quote(notes)));
    }
    msg.fields(&[
        ("Contact", ctx.text(&["contact_name", "contact_id"])),
        (
            "From agent",
            Some(
                ctx.text(&["from_agent_id"])
                    .unwrap_or_else(|| "unassigned".into()),
            ),
        ),
        ("To agent", ctx.text(&["to_agent_id"])),
        ("To team", ctx.text(&["to_team_id"])),
    ]);
}

/// Any other event type: every top-level `data` field.
fn generic(msg: &mut Message, ctx: &Ctx<'_>) {
    msg.header(&format!("🔔 {}", ctx.event_type));
    let fields: Vec<(&str, Option<String>)> = ctx
        .data
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                Some(value_text(v).unwrap_or_else(|| "null".into())),
            )
        })
        .collect();
    msg.fallback_detail(Some(&format!("{} data fields", fields.len())));
    if fields.is_empty() {
        msg.section("_No data._".into());
    }
    msg.fields(&fields);
}

fn templated(msg: &mut Message, template: &Template, delivery: &Delivery, ctx: &Ctx<'_>) {
    let lookup = |path: &str| -> Option<String> {
        match path {
            "event" => Some(ctx.event_type.to_owned()),
            "timestamp" => Some(ctx.timestamp.to_owned()),
            "webhook_id" => Some(delivery.endpoint_id.to_string()),
            "delivery_id" => Some(delivery.id.to_string()),
            "data" => Some(Value::Object(ctx.data.clone()).to_string()),
            _ => path
                .strip_prefix("data.")
                .and_then(|p| ctx.get(p))
                .and_then(value_text),
        }
    };
    if let Some(header) = &template.header {
        // plain_text: substituted values stay as they are.
        msg.header(&header.render(&lookup, plain));
    }
    let text = template.text.render(&lookup, esc);
    msg.fallback = Some(text.clone());
    msg.section(text);
}

/// `plain_text` needs no escaping.
fn plain(text: &str) -> Cow<'_, str> {
    Cow::Borrowed(text)
}

/// The readable content of a message event, unescaped.
fn message_content(ctx: &Ctx<'_>) -> Option<String> {
    if let Some(text) = ctx.text(&["content.text", "text", "content.body", "body"]) {
        return Some(text);
    }
    let kind = ctx.text(&["type"]).unwrap_or_default();
    let part = |field: &str| ctx.text(&[&format!("content.{kind}.{field}")]);
    match kind.as_str() {
        "image" | "video" | "audio" | "sticker" | "document" => {
            let icon = match kind.as_str() {
                "image" => "🖼️",
                "video" => "🎬",
                "audio" => "🎵",
                "sticker" => "🏷️",
                _ => "📄",
            };
            let label = part("filename").unwrap_or_else(|| format!("{kind} message"));
            Some(match part("caption") {
                Some(caption) => format!("{icon} {label}: {caption}"),
                None => format!("{icon} {label}"),
            })
        }
        "location" => {
            let place = [part("name"), part("address")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            let coords = match (part("latitude"), part("longitude")) {
                (Some(lat), Some(lon)) => format!(" ({lat}, {lon})"),
                _ => String::new(),
            };
            Some(format!("📍 {place}{coords}").trim().to_owned())
        }
        "interactive" => ctx
            .text(&[
                "content.interactive.button_reply.title",
                "content.interactive.list_reply.title",
            ])
            .map(
                |title| match ctx.text(&["content.interactive.list_reply.description"]) {
                    Some(d) => format!("🔘 {title} ({d})"),
                    None => format!("🔘 {title}"),
                },
            ),
        "template" => ctx.text(&["content.template.name"]).map(|name| {
            match ctx.text(&["content.template.language"]) {
                Some(lang) => format!("Template {name} ({lang})"),
                None => format!("Template {name}"),
            }
        }),
        "" => None,
        other => Some(format!("{other} message")),
    }
}

/// Escape mrkdwn's control characters. Borrowed when there is none.
pub fn esc(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A mrkdwn block quote of `text`, escaped.
fn quote(text: &str) -> String {
    esc(text)
        .lines()
        .map(|line| format!("> {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Length as Slack may count it: UTF-16 code units (≥ characters).
pub fn text_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// `text` cut to at most `limit` UTF-16 units, ending in `…` when cut: on
/// a character boundary, and before any `&...;` escape or `<...>` control
/// sequence the cut would split.
pub fn fit(text: &str, limit: usize) -> Cow<'_, str> {
    if text_len(text) <= limit {
        return Cow::Borrowed(text);
    }
    let budget = limit.saturating_sub(1);
    let mut used = 0usize;
    let mut end = 0usize;
    for (i, c) in text.char_indices() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    let mut kept = &text[..end];
    // Every `&` and `<` left in escaped text starts a sequence of ours; an
    // unterminated one was cut and must go whole.
    if let Some(amp) = kept.rfind('&') {
        if !kept[amp..].contains(';') {
            kept = &kept[..amp];
        }
    }
    if let Some(open) = kept.rfind('<') {
        if !kept[open..].contains('>') {
            kept = &kept[..open];
        }
    }
    let mut out = kept.trim_end().to_owned();
    out.push('…');
    Cow::Owned(out)
}

/// A message under construction; [`Message::finish`] applies the block limit.
#[derive(Default)]
struct Message {
    header: Option<Value>,
    /// Plain header text, the start of the fallback.
    headline: String,
    /// The fallback's detail after the headline, unescaped.
    detail: Option<String>,
    /// A complete fallback (mrkdwn, already escaped), from a template.
    fallback: Option<String>,
    /// Body blocks, each with the number of fields it shows.
    body: Vec<(Value, usize)>,
    context: Option<Value>,
}

impl Message {
    fn header(&mut self, text: &str) {
        let text = fit(text.trim(), MAX_HEADER_TEXT);
        if text.is_empty() {
            return;
        }
        self.headline = text.to_string();
        self.header = Some(json!({
            "type": "header",
            "text": {"type": "plain_text", "text": text, "emoji": true},
        }));
    }

    fn fallback_detail(&mut self, detail: Option<&str>) {
        self.detail = detail.map(str::to_owned);
    }

    /// A section of mrkdwn (already escaped); empty text is skipped.
    fn section(&mut self, text: String) {
        if text.trim().is_empty() {
            return;
        }
        let text = fit(&text, MAX_SECTION_TEXT);
        self.body.push((
            json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}),
            0,
        ));
    }

    /// `*Label*\nvalue` fields, ten per section; absent values are left out.
    fn fields(&mut self, fields: &[(&str, Option<String>)]) {
        let present: Vec<Value> = fields
            .iter()
            .filter_map(|(label, value)| {
                let value = value.as_ref()?;
                let label = fit(&esc(label), 200).into_owned();
                let text = format!("*{label}*\n{}", esc(value));
                Some(json!({"type": "mrkdwn", "text": fit(&text, MAX_FIELD_TEXT)}))
            })
            .collect();
        for chunk in present.chunks(MAX_FIELDS) {
            self.body
                .push((json!({"type": "section", "fields": chunk}), chunk.len()));
        }
    }

    fn context(&mut self, lines: Vec<String>) {
        let elements: Vec<Value> = lines
            .iter()
            .filter(|l| !l.is_empty())
            .take(MAX_CONTEXT_ELEMENTS)
            .map(|l| json!({"type": "mrkdwn", "text": fit(l, MAX_CONTEXT_TEXT)}))
            .collect();
        if !elements.is_empty() {
            self.context = Some(json!({"type": "context", "elements": elements}));
        }
    }

    fn finish(self) -> Value {
        let fixed = usize::from(self.header.is_some()) + usize::from(self.context.is_some());
        let room = MAX_BLOCKS - fixed;
        let mut blocks = Vec::with_capacity(MAX_BLOCKS);
        blocks.extend(self.header);
        if self.body.len() <= room {
            blocks.extend(self.body.into_iter().map(|(b, _)| b));
        } else {
            // Keep what fits and say what is missing, in the last place.
            let keep = room - 1;
            let mut rest = self.body;
            let hidden = rest.split_off(keep);
            let hidden_fields: usize = hidden.iter().map(|(_, n)| n).sum();
            blocks.extend(rest.into_iter().map(|(b, _)| b));
            let note = if hidden_fields > 0 {
                format!("_…and {hidden_fields} more fields not shown (Slack's block limit)._")
            } else {
                "_…more not shown (Slack's block limit)._".to_owned()
            };
            blocks.push(json!({
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": note}],
            }));
        }
        blocks.extend(self.context);

        let text = match self.fallback {
            Some(text) => text,
            None => {
                let headline = esc(&self.headline).into_owned();
                match self.detail.as_deref().map(str::trim) {
                    Some(detail) if !detail.is_empty() => {
                        format!("{headline}: {}", esc(&single_line(detail)))
                    }
                    _ => headline,
                }
            }
        };
        json!({
            "text": fit(&text, MAX_FALLBACK_TEXT),
            "blocks": blocks,
        })
    }
}

/// Notifications show one line: newlines become spaces.
fn single_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters() {
        assert_eq!(esc("a & b <@U1> >"), "a &amp; b &lt;@U1&gt; &gt;");
        assert!(matches!(esc("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn fit_cuts_on_boundaries_with_an_ellipsis() {
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("abcdefghij", 10), "abcdefghij");
        assert_eq!(fit("abcdefghijk", 10), "abcdefghi…");
        // Multi-byte and astral characters: never split, counted as UTF-16.
        let cut = fit("ééééééé", 5);
        assert_eq!(cut, "éééé…");
        let cut = fit("🎉🎉🎉🎉", 6);
        assert_eq!(cut, "🎉🎉…");
        assert!(text_len(&cut) <= 6);
        // An escape sequence is never cut in half.
        let cut = fit("abcdef&amp;gh", 9);
        assert_eq!(cut, "abcdef…");
        let cut = fit("ab <!date^1^{date}|x> tail", 8);
        assert_eq!(cut, "ab…");
    }

    #[test]
    fn fit_respects_every_limit_for_any_length() {
        let s = "Ab&<>é🎉 \n".repeat(700);
        for limit in [1, 2, 3, 150, 2000, 3000] {
            let escaped = esc(&s);
            let cut = fit(&escaped, limit);
            assert!(text_len(&cut) <= limit, "{limit}");
            assert!(cut.ends_with('…'));
        }
    }

    #[test]
    fn value_text_reads_like_a_person_would() {
        assert_eq!(value_text(&json!("x")), Some("x".into()));
        assert_eq!(value_text(&json!(131047)), Some("131047".into()));
        assert_eq!(value_text(&json!(null)), None);
        assert_eq!(
            value_text(&json!(["vip", "returning-customer"])),
            Some("vip, returning-customer".into())
        );
        assert_eq!(value_text(&json!({"a": 1})), Some(r#"{"a":1}"#.into()));
    }
}
