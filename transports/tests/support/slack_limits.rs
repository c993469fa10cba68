//! Slack's message limits, checked on the JSON a transport sends: used by
//! the rendering tests and by the fake Slack (which answers 400
//! `invalid_blocks` to a message that breaks them, as Slack does).
//!
//! Lengths are counted in characters, as Slack documents them.

use serde_json::Value;

pub const MAX_BLOCKS: usize = 50;
pub const MAX_SECTION_TEXT: usize = 3000;
pub const MAX_FIELDS: usize = 10;
pub const MAX_FIELD_TEXT: usize = 2000;
pub const MAX_HEADER_TEXT: usize = 150;
pub const MAX_CONTEXT_ELEMENTS: usize = 10;

fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

/// Every limit the rendering promises; `Err` says which one broke.
pub fn check(message: &Value) -> Result<(), String> {
    let text = message
        .get("text")
        .and_then(Value::as_str)
        .ok_or("no top-level text fallback")?;
    if text.trim().is_empty() {
        return Err("empty text fallback".into());
    }
    if text.chars().count() > 3000 {
        return Err(format!("text fallback of {} chars", text.chars().count()));
    }
    let blocks = message
        .get("blocks")
        .and_then(Value::as_array)
        .ok_or("no blocks")?;
    if blocks.is_empty() || blocks.len() > MAX_BLOCKS {
        return Err(format!("{} blocks", blocks.len()));
    }
    for (i, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "header" => {
                let t = &block["text"];
                if t["type"] != "plain_text" {
                    return Err(format!("block {i}: header text is not plain_text"));
                }
                let n = chars(&t["text"]);
                if n == 0 || n > MAX_HEADER_TEXT {
                    return Err(format!("block {i}: header of {n} chars"));
                }
            }
            "section" => {
                let has_text = block.get("text").is_some();
                if has_text {
                    let n = chars(&block["text"]["text"]);
                    if n == 0 || n > MAX_SECTION_TEXT {
                        return Err(format!("block {i}: section text of {n} chars"));
                    }
                }
                match block.get("fields").map(|f| f.as_array()) {
                    Some(Some(fields)) => {
                        if fields.is_empty() || fields.len() > MAX_FIELDS {
                            return Err(format!("block {i}: {} fields", fields.len()));
                        }
                        for f in fields {
                            let n = chars(&f["text"]);
                            if n == 0 || n > MAX_FIELD_TEXT {
                                return Err(format!("block {i}: field of {n} chars"));
                            }
                        }
                    }
                    Some(None) => return Err(format!("block {i}: fields is not a list")),
                    None if !has_text => return Err(format!("block {i}: empty section")),
                    None => {}
                }
            }
            "context" => {
                let elements = block["elements"]
                    .as_array()
                    .ok_or("context without elements")?;
                if elements.is_empty() || elements.len() > MAX_CONTEXT_ELEMENTS {
                    return Err(format!("block {i}: {} context elements", elements.len()));
                }
                for e in elements {
                    let n = chars(&e["text"]);
                    if n == 0 || n > 3000 {
                        return Err(format!("block {i}: context element of {n} chars"));
                    }
                }
            }
            "divider" => {}
            other => return Err(format!("block {i}: unexpected type {other:?}")),
        }
    }
    Ok(())
}

/// All mrkdwn texts of a message, for content assertions.
pub fn all_text(message: &Value) -> String {
    let mut out = String::new();
    collect(message, &mut out);
    out
}

fn collect(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| *k != "type")
            .for_each(|(_, v)| collect(v, out)),
        _ => {}
    }
}
