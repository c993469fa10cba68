//! `${VAR}` interpolation over the parsed YAML tree.
//!
//! Interpolating string scalars after parsing (rather than the raw text
//! before) means a variable's value can never inject YAML structure. The
//! result is always a string, byte for byte the variable's text: the field
//! it fills gives it its type when the config is read (`transports::de`),
//! so `max_in_flight: ${INFLIGHT}` is a number while `secret: ${S}` stays
//! text even when `S` reads like one (`1e5` is not `100000.0`).

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
            Ok(text) => *value = Value::String(text),
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

fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$${` for a literal `${`)".to_owned())?;
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
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
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
    fn substitutes_text_and_never_retypes() {
        let (v, p) = run("a: ${HOST}\nb: ${N}\nc: 'x-${N}-y'\nd: ${MISSING:-fallback}\ne: 'cost $5 and $${HOST}'\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(v["a"], Value::String("kafka:9092".into()));
        assert_eq!(
            v["b"],
            Value::String("32".into()),
            "the field it fills types it"
        );
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
    fn whole_values_keep_their_text() {
        fn env(name: &str) -> Option<String> {
            match name {
                "EMPTY" => Some(String::new()),
                "HEX" => Some("0x1F".into()),
                "PASS" => Some("s3cret #1".into()),
                "QUOTED" => Some("'q'".into()),
                "TILDE" => Some("~".into()),
                "YES" => Some("true".into()),
                "RATIO" => Some("0.7".into()),
                "EXP" => Some("1e5".into()),
                "BIG" => Some("1234567890123".into()),
                _ => None,
            }
        }
        let mut v: Value = serde_yaml_ng::from_str(
            "a: ${EMPTY}\nb: ${HEX}\nc: ${PASS}\nd: ${QUOTED}\ne: ${TILDE}\nf: ${YES}\ng: ${RATIO}\nh: ${EMPTY:-fallback}\ni: ${EXP}\nj: ${BIG}\n",
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
        assert_eq!(v["f"], Value::String("true".into()));
        assert_eq!(v["g"], Value::String("0.7".into()));
        assert_eq!(v["i"], Value::String("1e5".into()), "never 100000.0");
        assert_eq!(v["j"], Value::String("1234567890123".into()));
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
