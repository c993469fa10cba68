//! The per-endpoint Slack template: mrkdwn text with `{{placeholders}}`.
//!
//! This module owns the template syntax and its parser. It is deliberately
//! tiny (no loops, conditions or filters) so that a template can neither
//! fail at send time nor run anything: a placeholder is replaced by a value
//! of the event, escaped for mrkdwn, and that is all.
//!
//! Placeholders, with optional spaces inside the braces (`{{ data.name }}`):
//!
//! | placeholder | value |
//! |---|---|
//! | `{{event}}` | the event type |
//! | `{{timestamp}}` | the event time (RFC 3339, as produced) |
//! | `{{webhook_id}}` | the endpoint id |
//! | `{{delivery_id}}` | the delivery id |
//! | `{{data}}` | the whole `data` object as compact JSON |
//! | `{{data.a.b}}` | a field of `data`: strings as they are, numbers and booleans as written, lists of scalars comma-separated, objects as JSON |
//!
//! A missing or `null` field renders as nothing. `{{` always opens a
//! placeholder; the template's own text is sent as written (so it may use
//! mrkdwn: `*bold*`, `<https://crm.example/c|links>`), while substituted
//! values are escaped.

use std::borrow::Cow;

use serde::Deserialize;

/// Longest template text accepted (a section holds 3,000 characters).
const MAX_TEMPLATE_LEN: usize = 3000;
/// Most placeholders in one template.
const MAX_PLACEHOLDERS: usize = 100;

/// `template:` of a Slack endpoint, as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// The message: mrkdwn with placeholders. Also the notification text.
    pub text: String,
    /// An optional header line (plain text with placeholders, ≤ 150 chars
    /// after substitution).
    #[serde(default)]
    pub header: Option<String>,
}

/// A checked template, ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub text: Pattern,
    pub header: Option<Pattern>,
}

impl Template {
    /// Parse both parts; on error, the settings key (`template.text`,
    /// `template.header`) and why.
    pub fn parse(settings: &TemplateSettings) -> Result<Template, (String, String)> {
        let text = Pattern::parse(&settings.text).map_err(|e| ("template.text".into(), e))?;
        if settings.text.trim().is_empty() {
            return Err(("template.text".into(), "is empty".into()));
        }
        let header = settings
            .header
            .as_deref()
            .map(Pattern::parse)
            .transpose()
            .map_err(|e| ("template.header".into(), e))?;
        Ok(Template { text, header })
    }
}

/// Text with placeholders, split once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

impl Pattern {
    /// Parse `text`; on error, why (with the byte offset of the problem).
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.len() > MAX_TEMPLATE_LEN {
            return Err(format!("is longer than {MAX_TEMPLATE_LEN} bytes"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0usize;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` at byte {} is never closed", offset + open))?;
            let name = after[..close].trim();
            check_placeholder(name)
                .map_err(|why| format!("placeholder at byte {}: {why}", offset + open))?;
            parts.push(Part::Field(name.to_owned()));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if parts.iter().filter(|p| matches!(p, Part::Field(_))).count() > MAX_PLACEHOLDERS {
            return Err(format!("has more than {MAX_PLACEHOLDERS} placeholders"));
        }
        Ok(Pattern { parts })
    }

    /// Substitute every placeholder with `lookup`'s value passed through
    /// `escape`; literal text is kept as written.
    pub fn render(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
        escape: fn(&str) -> Cow<'_, str>,
    ) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(name) => {
                    if let Some(value) = lookup(name) {
                        out.push_str(&escape(&value));
                    }
                }
            }
        }
        out
    }
}

fn check_placeholder(name: &str) -> Result<(), String> {
    match name {
        "event" | "timestamp" | "webhook_id" | "delivery_id" | "data" => Ok(()),
        _ => match name.strip_prefix("data.") {
            Some(path)
                if path
                    .split('.')
                    .all(|s| !s.is_empty() && !s.contains(char::is_whitespace)) =>
            {
                Ok(())
            }
            _ => Err(format!(
                "`{}` is not one of event, timestamp, webhook_id, delivery_id, data, data.<field>",
                name.escape_debug()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str) -> String {
        let lookup = |name: &str| match name {
            "event" => Some("message.received".to_owned()),
            "data.name" => Some("<b>&co".to_owned()),
            _ => None,
        };
        Pattern::parse(text)
            .unwrap()
            .render(&lookup, super::super::render::esc)
    }

    #[test]
    fn substitutes_and_escapes_values_only() {
        assert_eq!(
            render("*{{ event }}* from {{data.name}}: <https://x|open>{{data.missing}}"),
            "*message.received* from &lt;b&gt;&amp;co: <https://x|open>"
        );
        assert_eq!(render("no placeholders"), "no placeholders");
        assert_eq!(
            render("{{event}}{{event}}"),
            "message.receivedmessage.received"
        );
    }

    #[test]
    fn refuses_bad_templates_with_the_position() {
        for (text, why) in [
            ("hi {{data.name", "never closed"),
            ("{{ nope }}", "not one of"),
            ("{{data.}}", "not one of"),
            ("{{data..x}}", "not one of"),
            ("{{}}", "not one of"),
        ] {
            let err = Pattern::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(Pattern::parse("ab {{x}}").unwrap_err().contains("byte 3"));
        assert!(Pattern::parse(&"x".repeat(3001)).is_err());
        let many = "{{event}}".repeat(101);
        assert!(Pattern::parse(&many).unwrap_err().contains("placeholders"));
    }

    #[test]
    fn template_settings_name_the_part_at_fault() {
        let settings = TemplateSettings {
            text: "ok".into(),
            header: Some("{{bad}}".into()),
        };
        assert_eq!(Template::parse(&settings).unwrap_err().0, "template.header");
        let settings = TemplateSettings {
            text: "  ".into(),
            header: None,
        };
        assert_eq!(Template::parse(&settings).unwrap_err().0, "template.text");
    }
}
