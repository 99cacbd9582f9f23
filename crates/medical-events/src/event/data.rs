//! The free-form `data` object, restricted to what MongoDB can store safely.

use serde_json::{Map, Value};

use super::FieldError;

/// Deepest nesting allowed, counting `data` itself as level 1.
pub const MAX_DEPTH: usize = 32;

/// The event's payload: a JSON object with no operator-like (`$`) keys, no
/// NUL in keys (BSON cannot store them) and integers that fit 64 bits.
#[derive(Debug, Clone, PartialEq)]
pub struct EventData(Map<String, Value>);

impl EventData {
    pub fn parse_json(value: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::new("data", "must be a JSON object")]);
        };
        let mut errors = Vec::new();
        check_object(object, "data", 1, &mut errors);
        if errors.is_empty() {
            Ok(Self(object.clone()))
        } else {
            Err(errors)
        }
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

fn check_object(
    object: &Map<String, Value>,
    path: &str,
    depth: usize,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in object {
        let child = format!("{path}.{key}");
        if key.starts_with('$') {
            errors.push(FieldError::new(&child, "keys must not start with '$'"));
        }
        if key.contains('\0') {
            errors.push(FieldError::new(
                path,
                "keys must not contain NUL characters",
            ));
        }
        check_value(value, &child, depth, errors);
    }
}

fn check_value(value: &Value, path: &str, depth: usize, errors: &mut Vec<FieldError>) {
    match value {
        Value::Object(_) | Value::Array(_) if depth + 1 > MAX_DEPTH => errors.push(
            FieldError::new(path, format!("nesting is deeper than {MAX_DEPTH} levels")),
        ),
        Value::Object(object) => check_object(object, path, depth + 1, errors),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_value(item, &format!("{path}[{index}]"), depth + 1, errors);
            }
        }
        Value::Number(number) if number.is_u64() && number.as_i64().is_none() => errors.push(
            FieldError::new(path, "integers must fit in a signed 64-bit integer"),
        ),
        _ => {}
    }
}

/// The same value with object keys sorted at every level, so equal payloads
/// serialize identically whatever order the client sent the keys in.
pub(crate) fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|key| (key.clone(), canonical(&object[key])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
