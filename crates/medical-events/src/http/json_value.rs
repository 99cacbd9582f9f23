//! Request bodies parsed to a [`Value`] that refuses an object key given
//! twice. RFC 8259 leaves such an object's meaning to the parser, and
//! parsers differ (first wins, last wins): a gateway that checked the first
//! `patientId` and this service storing the last would disagree about whose
//! event it is. `serde_json::from_slice::<Value>` keeps the last, so bodies
//! go through this visitor instead; it builds the same `Value`. A leading
//! byte-order mark is skipped.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use crate::hl7::charset::UTF8_BOM;

/// `bytes` as one JSON value, or serde_json's error (with its line and
/// column) for malformed JSON and for a key given twice in one object.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    // RFC 8259 lets a parser ignore a byte-order mark (some Windows tools
    // write one before the body).
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = UniqueKeys.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Builds a [`Value`], refusing repeated keys at every depth.
#[derive(Clone, Copy)]
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity, so this is always a number.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                Entry::Occupied(entry) => {
                    let key = entry.key();
                    return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                }
                Entry::Vacant(entry) => {
                    entry.insert(map.next_value_seed(self)?);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::from_slice;

    #[test]
    fn builds_what_serde_json_builds() {
        let text = r#"{"a":[1,-2,18446744073709551615,2.5,"s",true,null,{}],"b":{"c":"\u00e9"}}"#;
        let expected: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(from_slice(text.as_bytes()).unwrap(), expected);
        assert_eq!(from_slice(b" 7 ").unwrap(), json!(7));
        assert_eq!(from_slice(b"\xEF\xBB\xBF{}").unwrap(), json!({}));
    }

    #[test]
    fn refuses_a_key_given_twice_at_any_depth_and_in_any_spelling() {
        for (text, key) in [
            (r#"{"a":1,"a":2}"#, "a"),
            (r#"{"a":{"b":[{"c":1,"c":1}]}}"#, "c"),
            (r#"{"x":1,"\u0078":2}"#, "x"),
        ] {
            let error = from_slice(text.as_bytes()).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("duplicate key `{key}` at line 1 column")),
                "{error}"
            );
        }
        // The same key in two objects is not a repeat.
        assert!(from_slice(br#"[{"a":1},{"a":2}]"#).is_ok());
    }

    #[test]
    fn malformed_json_and_trailing_text_are_still_refused() {
        for text in [&b"{\"a\":"[..], b"{} {}", b"[1,]", b"", b"\xEF\xBB\xBF"] {
            assert!(from_slice(text).is_err(), "{text:?}");
        }
    }
}
