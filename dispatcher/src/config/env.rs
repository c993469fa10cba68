//! `${VAR}` interpolation over the parsed YAML tree.
//!
//! Interpolating string scalars after parsing (rather than the raw text
//! before) means a variable's value can never inject YAML structure. A scalar
//! that is exactly one `${VAR}` is re-read as YAML so `max_in_flight:
//! ${INFLIGHT}` still yields a number.

use serde_yaml_ng::Value;

use super::Problem;

/// Replace `${NAME}` and `${NAME:-default}` in every string of `value`;
/// `$${` stands for a literal `${`. Unset variables without a default are
/// reported with the key path where they were used.
pub fn interpolate(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) if s.contains('$') => match expand(s, lookup) {
            Ok(Expanded { text, whole_var }) => {
                *value = if whole_var {
                    retype(text)
                } else {
                    Value::String(text)
                };
            }
            Err(msg) => problems.push(Problem::new(path, msg)),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), lookup, problems);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate(v, &child, lookup, problems);
            }
        }
        _ => {}
    }
}

/// A whole-variable value becomes a number or boolean when it is written
/// exactly like one (`32`, `2.5`, `true`); anything else stays the string it
/// is, byte for byte. Re-reading it as general YAML would turn an empty value
/// into "absent" (silently starting the embedded broker for an empty
/// `${KAFKA_BROKERS}`), `0x1F` into 31, and cut a password at ` #`.
fn retype(text: String) -> Value {
    if text == "true" || text == "false" {
        return Value::Bool(text == "true");
    }
    let numeric = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if numeric {
        if let Ok(Value::Number(n)) = serde_yaml_ng::from_str::<Value>(&text) {
            return Value::Number(n);
        }
    }
    Value::String(text)
}

struct Expanded {
    text: String,
    /// The whole scalar was a single `${...}`.
    whole_var: bool,
}

fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    let mut vars = 0;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let spec = &tail[..end];
            let (name, default) = match spec.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (spec, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "`${{{spec}}}` is not a valid environment variable reference"
                ));
            }
            // As in the shell, `:-` applies to unset *and* empty variables.
            match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set (write ${{{name}:-default}} for a default)"))
                }
            }
            vars += 1;
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    let whole_var = vars == 1
        && input.starts_with("${")
        && input.ends_with('}')
        && input.matches("${").count() == 1;
    Ok(Expanded {
        text: out,
        whole_var,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("kafka:9092".into()),
            "N" => Some("32".into()),
            "SECRET" => Some("whsec_abc".into()),
            _ => None,
        }
    }

    fn run(yaml: &str) -> (Value, Vec<Problem>) {
        let mut v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        interpolate(&mut v, "", &env, &mut problems);
        (v, problems)
    }

    #[test]
    fn substitutes_and_types_whole_values() {
        let (v, p) = run("a: ${HOST}\nb: ${N}\nc: 'x-${N}-y'\nd: ${MISSING:-fallback}\ne: 'cost $5 and $${HOST}'\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(v["a"], Value::String("kafka:9092".into()));
        assert_eq!(v["b"], Value::Number(32.into()));
        assert_eq!(v["c"], Value::String("x-32-y".into()));
        assert_eq!(v["d"], Value::String("fallback".into()));
        assert_eq!(v["e"], Value::String("cost $5 and ${HOST}".into()));
    }

    #[test]
    fn reports_unset_variables_with_their_path() {
        let (_, p) = run("endpoints:\n  - id: a\n    secret: ${NOPE}\n  - url: '${BAD NAME}'\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].path, "endpoints[0].secret");
        assert!(p[0].message.contains("NOPE is not set"));
        assert_eq!(p[1].path, "endpoints[1].url");
        assert!(p[1].message.contains("not a valid"));
    }

    #[test]
    fn whole_values_keep_their_text_unless_plainly_numbers_or_booleans() {
        fn env(name: &str) -> Option<String> {
            match name {
                "EMPTY" => Some(String::new()),
                "HEX" => Some("0x1F".into()),
                "PASS" => Some("s3cret #1".into()),
                "QUOTED" => Some("'q'".into()),
                "TILDE" => Some("~".into()),
                "YES" => Some("true".into()),
                "RATIO" => Some("0.7".into()),
                _ => None,
            }
        }
        let mut v: Value = serde_yaml_ng::from_str(
            "a: ${EMPTY}\nb: ${HEX}\nc: ${PASS}\nd: ${QUOTED}\ne: ${TILDE}\nf: ${YES}\ng: ${RATIO}\nh: ${EMPTY:-fallback}\n",
        )
        .unwrap();
        let mut p = Vec::new();
        interpolate(&mut v, "", &env, &mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            v["a"],
            Value::String(String::new()),
            "empty stays an empty string, never absent"
        );
        assert_eq!(v["b"], Value::String("0x1F".into()));
        assert_eq!(v["c"], Value::String("s3cret #1".into()));
        assert_eq!(v["d"], Value::String("'q'".into()));
        assert_eq!(v["e"], Value::String("~".into()));
        assert_eq!(v["f"], Value::Bool(true));
        assert_eq!(v["g"], serde_yaml_ng::from_str::<Value>("0.7").unwrap());
        assert_eq!(
            v["h"],
            Value::String("fallback".into()),
            ":- also covers empty variables"
        );
    }

    #[test]
    fn never_injects_structure() {
        fn evil(_: &str) -> Option<String> {
            Some("{a: 1}".into())
        }
        let mut v: Value = serde_yaml_ng::from_str("x: ${E}").unwrap();
        let mut p = Vec::new();
        interpolate(&mut v, "", &evil, &mut p);
        assert_eq!(v["x"], Value::String("{a: 1}".into()));
    }
}
