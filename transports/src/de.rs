//! Reading settings out of a JSON value tree, for configuration files.
//!
//! Two things differ from deserializing a `serde_json::Value` directly:
//!
//! - **The target type decides.** A string is accepted where a number or a
//!   boolean is wanted when it is written exactly like one (`"32"`,
//!   `"true"`). `${VAR}` interpolation always yields strings, so a variable
//!   takes the type of the field it fills: `max_in_flight: ${N}` is a
//!   number, `secret: ${S}` stays the exact text of `S` even when that text
//!   looks like a number (`1e5` is not turned into `100000.0`).
//! - **Errors name the kind of a value, never the value.** serde's own
//!   messages quote it (``invalid type: integer `1234567890123`, expected a
//!   string``), and configuration values are often secrets. Here that reads
//!   `invalid type: a number, expected a string`.
//!
//! The other direction is not lenient: a number where a string is wanted
//! is refused rather than turned into text, since YAML may already have
//! changed it (`0123`, `1e5`).

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, Expected, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde_json::Value;

/// A settings error whose text never contains a value of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The kind of an unexpected value, without the value.
fn kind(unexpected: &Unexpected<'_>) -> &'static str {
    match unexpected {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) | Unexpected::Float(_) => "a number",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "null",
        Unexpected::Option => "an optional value",
        Unexpected::NewtypeStruct | Unexpected::NewtypeVariant => "a wrapped value",
        Unexpected::Seq => "a list",
        Unexpected::Map => "a mapping",
        Unexpected::Enum | Unexpected::UnitVariant | Unexpected::TupleVariant => "a variant",
        Unexpected::StructVariant => "a variant",
        Unexpected::Other(_) => "a value",
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Error(format!("invalid type: {}, expected {exp}", kind(&unexp)))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Error(format!("invalid value: {}, expected {exp}", kind(&unexp)))
    }

    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        Error(format!("invalid length {len}, expected {exp}"))
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        Error(format!(
            "unknown value, expected one of {}",
            one_of(expected)
        ))
    }
}

fn one_of(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deserialize `T` from `value`; on error, the path of the key at fault
/// (`options.acks`, `secrets[1]`, `.` for the whole value) and the message.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, (String, Error)> {
    serde_path_to_error::deserialize(Tree(value))
        .map_err(|e| (e.path().to_string(), e.into_inner()))
}

/// A JSON value as a deserializer with the rules of this module.
pub struct Tree(pub Value);

impl Tree {
    fn unexpected(&self) -> Unexpected<'_> {
        match &self.0 {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(_) => Unexpected::Float(0.0),
            Value::String(_) => Unexpected::Str(""),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        }
    }

    fn number<'de, V: Visitor<'de>>(self, visitor: V, float: bool) -> Result<V::Value, Error> {
        match self.0 {
            Value::Number(n) => visit_number(&n, visitor),
            Value::String(s) => {
                let parsed = if float {
                    s.parse::<f64>().ok().map(Num::F)
                } else if let Ok(u) = s.parse::<u64>() {
                    Some(Num::U(u))
                } else {
                    s.parse::<i64>().ok().map(Num::I)
                };
                match parsed {
                    Some(Num::U(u)) => visitor.visit_u64(u),
                    Some(Num::I(i)) => visitor.visit_i64(i),
                    Some(Num::F(f)) => visitor.visit_f64(f),
                    None => Err(de::Error::invalid_value(Unexpected::Str(""), &visitor)),
                }
            }
            other => Err(de::Error::invalid_type(Tree(other).unexpected(), &visitor)),
        }
    }
}

enum Num {
    U(u64),
    I(i64),
    F(f64),
}

fn visit_number<'de, V: Visitor<'de>>(
    n: &serde_json::Number,
    visitor: V,
) -> Result<V::Value, Error> {
    if let Some(u) = n.as_u64() {
        visitor.visit_u64(u)
    } else if let Some(i) = n.as_i64() {
        visitor.visit_i64(i)
    } else {
        visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
    }
}

macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.number(visitor, false)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tree {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => visit_number(&n, visitor),
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => visit_seq(items, visitor),
            Value::Object(map) => visit_map(map, visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Bool(b) => visitor.visit_bool(b),
            Value::String(s) if s == "true" || s == "false" => visitor.visit_bool(s == "true"),
            Value::String(_) => Err(de::Error::invalid_value(Unexpected::Str(""), &visitor)),
            other => Err(de::Error::invalid_type(Tree(other).unexpected(), &visitor)),
        }
    }

    integers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor, true)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor, true)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(s) => visitor.visit_string(s),
            other => Err(de::Error::invalid_type(Tree(other).unexpected(), &visitor)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Tree(other)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            other => Err(de::Error::invalid_type(Tree(other).unexpected(), &visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            // A key written with nothing after it (`topics:`) is an empty list.
            Value::Null => visit_seq(Vec::new(), visitor),
            Value::Array(items) => visit_seq(items, visitor),
            other => Err(de::Error::invalid_type(Tree(other).unexpected(), &visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visit_map(serde_json::Map::new(), visitor),
            Value::Object(map) => visit_map(map, visitor),
            other => Err(de::Error::invalid_type(Tree(other).unexpected(), &visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(variant) => visitor.visit_enum(Enum {
                variant,
                value: None,
            }),
            Value::Object(map) if map.len() == 1 => {
                let (variant, value) = map.into_iter().next().expect("one entry");
                visitor.visit_enum(Enum {
                    variant,
                    value: Some(value),
                })
            }
            other => Err(de::Error::invalid_type(Tree(other).unexpected(), &visitor)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

fn visit_seq<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, Error> {
    let len = items.len();
    let mut seq = Seq(items.into_iter());
    let value = visitor.visit_seq(&mut seq)?;
    if seq.0.len() == 0 {
        Ok(value)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements"))
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    map: serde_json::Map<String, Value>,
    visitor: V,
) -> Result<V::Value, Error> {
    visitor.visit_map(Map {
        entries: map.into_iter(),
        value: None,
    })
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Seq {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|v| seed.deserialize(Tree(v))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map {
    entries: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for Map {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(Tree(self.value.take().unwrap_or(Value::Null)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct Enum {
    variant: String,
    value: Option<Value>,
}

impl<'de> EnumAccess<'de> for Enum {
    type Error = Error;
    type Variant = Variant;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Variant), Error> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, Variant(self.value)))
    }
}

struct Variant(Option<Value>);

impl<'de> VariantAccess<'de> for Variant {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None | Some(Value::Null) => Ok(()),
            Some(other) => Err(de::Error::invalid_type(
                Tree(other).unexpected(),
                &"nothing",
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(Tree(self.0.unwrap_or(Value::Null)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(Tree(self.0.unwrap_or(Value::Null)), visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(Tree(self.0.unwrap_or(Value::Null)), visitor)
    }
}

impl<'de> IntoDeserializer<'de, Error> for Tree {
    type Deserializer = Tree;

    fn into_deserializer(self) -> Tree {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct S {
        #[serde(default)]
        secret: Option<String>,
        #[serde(default)]
        n: Option<u32>,
        #[serde(default)]
        ratio: Option<f64>,
        #[serde(default)]
        on: Option<bool>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Basic,
        Post,
    }

    fn read(v: Value) -> Result<S, (String, Error)> {
        from_value(v)
    }

    #[test]
    fn strings_take_the_type_of_their_field() {
        let s = read(json!({"secret": "1e5", "n": "32", "ratio": "0.7", "on": "true"})).unwrap();
        assert_eq!(s.secret.as_deref(), Some("1e5"), "a secret stays its text");
        assert_eq!(s.n, Some(32));
        assert_eq!(s.ratio, Some(0.7));
        assert_eq!(s.on, Some(true));
        let s = read(json!({"n": 7, "mode": "post"})).unwrap();
        assert_eq!(s.n, Some(7));
        assert_eq!(s.mode, Some(Mode::Post));
    }

    /// The attack of the review: a secret that reads as a number, or a
    /// header map given as a string, must not be quoted by the error.
    #[test]
    fn errors_never_quote_the_value() {
        let cases = [
            (json!({"secret": 1234567890123u64}), "secret", "a number"),
            (
                json!({"headers": "Bearer topsecret"}),
                "headers",
                "a string",
            ),
            (
                json!({"headers": {"Authorization": 99887766}}),
                "headers.Authorization",
                "a number",
            ),
            (json!({"n": "topsecret"}), "n", "a string"),
            (json!({"n": "-99887766"}), "n", "a number"),
            (json!({"on": "topsecret"}), "on", "a string"),
            (json!({"mode": "topsecret"}), "mode", "`basic`, `post`"),
            (json!({"ratio": [1]}), "ratio", "a list"),
        ];
        for (input, path, words) in cases {
            let (at, error) = read(input.clone()).unwrap_err();
            let text = error.to_string();
            assert_eq!(at, path, "{input}: {text}");
            assert!(text.contains(words), "{input}: {text}");
            for secret in ["1234567890123", "topsecret", "99887766"] {
                assert!(!text.contains(secret), "{input}: {text}");
            }
        }
        let (_, error) = read(json!({"surprise": 1})).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `surprise`"),
            "{error}"
        );
    }

    #[test]
    fn null_lists_and_maps_are_empty() {
        let s = read(json!({"headers": null})).unwrap();
        assert!(s.headers.is_empty());
        let list: Vec<u8> = from_value(Value::Null).unwrap();
        assert!(list.is_empty());
    }
}
