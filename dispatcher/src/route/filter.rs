//! Filters on `data` fields: `filter: { "data.whatsapp_account_id": "..." }`,
//! with the operators users know from Outpost and Convoy (`$in`, `$neq`,
//! `$exists`, `$gt` and kin, `$prefix`, `$and`, `$or`).
//!
//! A filter is parsed once into a tree of tests on field paths. Two
//! evaluators share its semantics ([`Test::eval`]): [`Filter::matches`]
//! looks each field up in the raw `data` bytes with
//! [`transports::json::lookup`] (the reference, used by the linear router
//! and the tests), and the indexed router evaluates the same tests on
//! fields it has read once per event. Neither turns `data` into a tree.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use transports::json::Lookup;
use transports::Event;

use crate::config::{FilterValue, Scalar};

/// All conditions must hold. Empty: every event matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    nodes: Vec<Node<Path>>,
}

/// A field path below `data`, one key per level: `["error", "code"]`.
pub(crate) type Path = Arc<[Box<str>]>;

/// One condition, on a field named by `F` (a path here; a field number in
/// the router's index).
#[derive(Debug, Clone)]
pub(crate) enum Node<F> {
    Test {
        field: F,
        test: Test,
    },
    /// `$or`: at least one branch holds; each branch is all-of.
    Any(Vec<Vec<Node<F>>>),
}

#[derive(Debug, Clone)]
pub(crate) enum Test {
    /// Exact match, a list, `$eq` or `$in`: sorted, without duplicates.
    OneOf(Box<[Box<str>]>),
    Neq(Box<str>),
    Exists(bool),
    Compare(Cmp, f64),
    Prefix(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// What one field of `data` holds, as conditions see it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field<'a> {
    Absent,
    /// The key is duplicated at some level: no condition on it holds.
    Ambiguous,
    /// `raw` is the JSON text; `text` is what equality compares: a
    /// string's decoded text, the JSON text of anything else.
    Value {
        raw: &'a str,
        text: &'a str,
    },
}

/// Deepest nesting of `$and` / `$or`: enough for any real filter, and a
/// bound on the recursion a filter from outside can cause.
pub const MAX_NESTING: usize = 8;

const OPERATORS: &str = "$eq, $neq, $in, $exists, $gt, $gte, $lt, $lte, $prefix";

impl Filter {
    /// Build from config; on error returns the key path of the mistake
    /// below `filter` (`data.total.$gt`, `$or[1].data.type`) and why.
    pub fn parse(spec: &BTreeMap<String, FilterValue>) -> Result<Filter, (String, String)> {
        Ok(Filter {
            nodes: parse_all(spec, "", 0)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn nodes(&self) -> &[Node<Path>] {
        &self.nodes
    }

    /// Strings compare by their decoded text; numbers and booleans by their
    /// JSON text (`131047` matches a filter value of `131047` or `"131047"`).
    /// A missing field does not match (but for `$neq` and `$exists: false`);
    /// a field whose key is duplicated matches nothing at all.
    pub fn matches(&self, event: &Event) -> bool {
        let data = event.data();
        eval(
            &self.nodes,
            &mut |path: &Path, test: &Test| match transports::json::lookup(data, path) {
                Lookup::Absent => test.eval(Field::Absent),
                Lookup::Ambiguous => test.eval(Field::Ambiguous),
                Lookup::Found(raw) => {
                    let raw = raw.get();
                    match text_of(raw) {
                        Some(text) => test.eval(Field::Value { raw, text: &text }),
                        None => test.eval(Field::Ambiguous),
                    }
                }
            },
        )
    }
}

/// What equality compares for the JSON value `raw`: a string's decoded
/// text (borrowed unless it has escapes), the JSON text of anything else.
/// `None` for a string that does not decode.
pub(crate) fn text_of(raw: &str) -> Option<Cow<'_, str>> {
    if raw.starts_with('"') {
        transports::json::str_value(raw)
    } else {
        Some(Cow::Borrowed(raw))
    }
}

/// Whether every node holds, `check` telling whether one test holds on its
/// field.
pub(crate) fn eval<F>(nodes: &[Node<F>], check: &mut impl FnMut(&F, &Test) -> bool) -> bool {
    nodes.iter().all(|node| match node {
        Node::Test { field, test } => check(field, test),
        Node::Any(branches) => branches.iter().any(|b| eval(b, check)),
    })
}

impl Test {
    pub(crate) fn eval(&self, field: Field<'_>) -> bool {
        match (self, field) {
            // Fail closed: a producer must not be able to satisfy a
            // condition by writing a key twice.
            (_, Field::Ambiguous) => false,
            (Test::Exists(want), Field::Absent) => !want,
            (Test::Exists(want), Field::Value { .. }) => *want,
            (Test::Neq(_), Field::Absent) => true,
            (_, Field::Absent) => false,
            (Test::Neq(v), Field::Value { text, .. }) => **v != *text,
            (Test::OneOf(values), Field::Value { text, .. }) => {
                values.binary_search_by(|v| (**v).cmp(text)).is_ok()
            }
            (Test::Prefix(p), Field::Value { text, .. }) => text.starts_with(&**p),
            (Test::Compare(op, bound), Field::Value { raw, .. }) => {
                is_number(raw)
                    && raw.parse::<f64>().is_ok_and(|n| match op {
                        Cmp::Gt => n > *bound,
                        Cmp::Gte => n >= *bound,
                        Cmp::Lt => n < *bound,
                        Cmp::Lte => n <= *bound,
                    })
            }
        }
    }
}

fn is_number(raw: &str) -> bool {
    raw.bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
}

/// A filter key as a path below `data`: `data.a.b` is `["a", "b"]`.
pub(crate) fn parse_path(key: &str) -> Option<Path> {
    let rest = key.strip_prefix("data.")?;
    if rest.split('.').any(str::is_empty) {
        return None;
    }
    Some(rest.split('.').map(Box::from).collect())
}

type ParseError = (String, String);

fn fail<T>(at: impl Into<String>, why: impl Into<String>) -> Result<T, ParseError> {
    Err((at.into(), why.into()))
}

/// The conditions of one filter mapping (the top level, or one item of
/// `$and` / `$or`), `at` being its key path with a trailing separator.
fn parse_all(
    spec: &BTreeMap<String, FilterValue>,
    at: &str,
    depth: usize,
) -> Result<Vec<Node<Path>>, ParseError> {
    let mut nodes = Vec::with_capacity(spec.len());
    for (key, value) in spec {
        let here = format!("{at}{key}");
        if key.starts_with('$') {
            let and = match key.as_str() {
                "$and" => true,
                "$or" => false,
                _ => {
                    return fail(
                        here,
                        format!(
                            "only $and and $or stand beside field keys; `{key}` goes under a field key, as in `data.total: {{$gte: 100}}`"
                        ),
                    )
                }
            };
            if depth >= MAX_NESTING {
                return fail(
                    here,
                    format!("$and and $or nest {MAX_NESTING} levels deep at most"),
                );
            }
            let items = match value {
                FilterValue::List(items) => items,
                FilterValue::AnyOf(list) if list.is_empty() => {
                    return fail(here, "lists no filter: give at least one")
                }
                _ => return fail(
                    here,
                    "expects a list of filters, as in `[{data.type: text}, {data.type: image}]`",
                ),
            };
            let mut branches = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                let item_at = format!("{here}[{j}]");
                match item {
                    FilterValue::Map(m) if m.is_empty() => {
                        return fail(item_at, "an empty filter: give at least one condition")
                    }
                    FilterValue::Map(m) => {
                        branches.push(parse_all(m, &format!("{item_at}."), depth + 1)?)
                    }
                    _ => {
                        return fail(
                            item_at,
                            "expected a filter (a mapping such as `{data.type: text}`)",
                        )
                    }
                }
            }
            if and {
                nodes.extend(branches.into_iter().flatten());
            } else {
                nodes.push(Node::Any(branches));
            }
            continue;
        }
        let Some(path) = parse_path(key) else {
            return fail(
                here,
                "a filter key is a field path below data, such as `data.whatsapp_account_id`",
            );
        };
        match value {
            FilterValue::One(Scalar(s)) => nodes.push(Node::Test {
                field: path,
                test: one_of([s.as_str()]),
            }),
            FilterValue::AnyOf(list) if list.is_empty() => {
                return fail(here, "an empty list matches nothing")
            }
            FilterValue::AnyOf(list) => nodes.push(Node::Test {
                field: path,
                test: one_of(list.iter().map(|s| s.0.as_str())),
            }),
            FilterValue::List(_) => {
                return fail(
                    here,
                    "a list of values holds strings, numbers or booleans only",
                )
            }
            FilterValue::Map(ops) if ops.is_empty() => {
                return fail(
                    here,
                    format!("an empty mapping: give an operator ({OPERATORS})"),
                )
            }
            FilterValue::Map(ops) => {
                for (op, operand) in ops {
                    let test =
                        parse_operator(op, operand).or_else(|e| fail(format!("{here}.{op}"), e))?;
                    nodes.push(Node::Test {
                        field: path.clone(),
                        test,
                    });
                }
            }
        }
    }
    Ok(nodes)
}

fn one_of<'s>(values: impl IntoIterator<Item = &'s str>) -> Test {
    let mut values: Vec<Box<str>> = values.into_iter().map(Box::from).collect();
    values.sort_unstable();
    values.dedup();
    Test::OneOf(values.into())
}

fn parse_operator(op: &str, operand: &FilterValue) -> Result<Test, String> {
    let scalar = || match operand {
        FilterValue::One(Scalar(s)) => Ok(s.as_str()),
        _ => Err(format!(
            "{op} takes one value (a string, number or boolean)"
        )),
    };
    let number = || {
        scalar()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .ok_or_else(|| format!("{op} takes a number"))
    };
    Ok(match op {
        "$eq" => one_of([scalar()?]),
        "$in" => match operand {
            FilterValue::AnyOf(list) if list.is_empty() => {
                return Err("an empty list matches nothing".into())
            }
            FilterValue::AnyOf(list) => one_of(list.iter().map(|s| s.0.as_str())),
            _ => return Err("$in takes a list of strings, numbers or booleans".into()),
        },
        "$neq" => Test::Neq(scalar()?.into()),
        "$exists" => match scalar()? {
            "true" => Test::Exists(true),
            "false" => Test::Exists(false),
            _ => return Err("$exists takes true or false".into()),
        },
        "$gt" => Test::Compare(Cmp::Gt, number()?),
        "$gte" => Test::Compare(Cmp::Gte, number()?),
        "$lt" => Test::Compare(Cmp::Lt, number()?),
        "$lte" => Test::Compare(Cmp::Lte, number()?),
        "$prefix" => match scalar()? {
            "" => return Err("an empty prefix matches every value: use $exists".into()),
            p => Test::Prefix(p.into()),
        },
        "$and" | "$or" => {
            return Err(format!(
                "{op} stands beside field keys, as in `{op}: [{{data.a: x}}, {{data.b: y}}]`"
            ))
        }
        _ => {
            let hint = match op {
                "$exist" => " (did you mean `$exists`?)".to_owned(),
                "$ne" => " (did you mean `$neq`?)".to_owned(),
                "$startsWith" | "$startswith" | "$starts_with" => {
                    " (did you mean `$prefix`?)".to_owned()
                }
                _ if !op.starts_with('$') => {
                    " (operators start with `$`; a nested field is one key: `data.a.b`)".to_owned()
                }
                _ => String::new(),
            };
            return Err(format!(
                "unknown operator `{op}`{hint} (known: {OPERATORS})"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use transports::SourceRef;

    fn event(data: &str) -> Event {
        let raw = format!(r#"{{"event":"x.y","data":{data}}}"#);
        let src = SourceRef {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        Event::decode(Bytes::from(raw), src, Some(0), 1 << 20).unwrap()
    }

    fn filter(pairs: &[(&str, FilterValue)]) -> Filter {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Filter::parse(&m).unwrap()
    }

    fn one(s: &str) -> FilterValue {
        FilterValue::One(Scalar(s.into()))
    }

    #[test]
    fn matches_strings_numbers_nested_and_any_of() {
        let f = filter(&[("data.whatsapp_account_id", one("acct-1"))]);
        assert!(f.matches(&event(
            r#"{"a":[1,{"b":2}],"whatsapp_account_id":"acct-1"}"#
        )));
        assert!(!f.matches(&event(r#"{"whatsapp_account_id":"acct-2"}"#)));
        assert!(!f.matches(&event(r#"{"other":"acct-1"}"#)));
        // Escaped JSON strings compare by their decoded text.
        assert!(f.matches(&event(r#"{"whatsapp_account_id":"acct\u002d1"}"#)));

        let nested = filter(&[("data.error.code", one("131047"))]);
        assert!(nested.matches(&event(r#"{"error":{"code":131047,"message":"x"}}"#)));
        assert!(!nested.matches(&event(r#"{"error":{"code":131026}}"#)));
        assert!(!nested.matches(&event(r#"{"error":"flat"}"#)));

        let any = filter(&[(
            "data.channel",
            FilterValue::AnyOf(vec![Scalar("whatsapp".into()), Scalar("instagram".into())]),
        )]);
        assert!(any.matches(&event(r#"{"channel":"instagram"}"#)));
        assert!(!any.matches(&event(r#"{"channel":"messenger"}"#)));

        let both = filter(&[
            ("data.channel", one("whatsapp")),
            ("data.is_ai", one("true")),
        ]);
        assert!(both.matches(&event(r#"{"channel":"whatsapp","is_ai":true}"#)));
        assert!(!both.matches(&event(r#"{"channel":"whatsapp","is_ai":false}"#)));
    }

    /// Finding 8 of the security review: with a duplicated tenant key the
    /// filter read the first value while receivers read the last, so a
    /// producer could route one tenant's event to another. Now neither
    /// tenant's filter matches: the record fails closed.
    #[test]
    fn a_duplicated_filtered_key_matches_no_tenant() {
        let a = filter(&[("data.whatsapp_account_id", one("acct-A"))]);
        let b = filter(&[("data.whatsapp_account_id", one("acct-B"))]);
        let forged = event(r#"{"whatsapp_account_id":"acct-A","whatsapp_account_id":"acct-B"}"#);
        assert!(!a.matches(&forged));
        assert!(!b.matches(&forged));
        let nested = filter(&[("data.owner.id", one("acct-A"))]);
        assert!(!nested.matches(&event(r#"{"owner":{"id":"acct-A","id":"acct-B"}}"#)));
        assert!(a.matches(&event(
            r#"{"whatsapp_account_id":"acct-A","other":1,"other":2}"#
        )));
    }

    #[test]
    fn refuses_bad_keys() {
        for key in ["whatsapp_account_id", "data.", "data..x", "event"] {
            let m = [(key.to_string(), one("v"))].into_iter().collect();
            let (k, msg) = Filter::parse(&m).unwrap_err();
            assert_eq!(k, key);
            assert!(msg.contains("below data"), "{msg}");
        }
    }
}
