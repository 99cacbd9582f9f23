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
    /// Only for an object that passed the `data` rules (see `storage_problems`).
    pub(super) fn from_validated(object: Map<String, Value>) -> Self {
        Self(object)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Everything in `object` that MongoDB could not store as is, each named by
/// its JSON path from `data`, in document order. Nothing deeper than
/// `MAX_DEPTH` is looked at: one error says the whole branch is too deep.
pub(super) fn storage_problems(object: &Map<String, Value>) -> Vec<FieldError> {
    let mut problems = Vec::new();
    check_object(object, "data", 1, &mut problems);
    problems
}

fn check_object(
    object: &Map<String, Value>,
    path: &str,
    depth: usize,
    problems: &mut Vec<FieldError>,
) {
    for (key, value) in object {
        let child = format!("{path}.{key}");
        if key.starts_with('$') {
            problems.push(FieldError::new(&child, "keys must not start with '$'"));
        }
        if key.contains('\0') {
            // Named by the parent: a path with a NUL in it is no use to a client.
            problems.push(FieldError::new(
                path,
                "keys must not contain NUL characters",
            ));
        }
        check_value(value, &child, depth, problems);
    }
}

fn check_value(value: &Value, path: &str, depth: usize, problems: &mut Vec<FieldError>) {
    match value {
        Value::Object(_) | Value::Array(_) if depth + 1 > MAX_DEPTH => problems.push(
            FieldError::new(path, format!("nesting is deeper than {MAX_DEPTH} levels")),
        ),
        Value::Object(object) => check_object(object, path, depth + 1, problems),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_value(item, &format!("{path}[{index}]"), depth + 1, problems);
            }
        }
        Value::Number(number) if number.is_u64() && number.as_i64().is_none() => problems.push(
            FieldError::new(path, "integers must fit in a signed 64-bit integer"),
        ),
        _ => {}
    }
}

/// Writes `value` as compact JSON with object keys sorted at every level
/// (the text `canonical(value).to_string()` gives), without building that
/// copy: equal payloads write identically whatever order the client sent
/// the keys in, and a large body costs no second tree to hash.
pub(crate) fn write_canonical(value: &Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match value {
        Value::Object(object) => write_canonical_map(object, out),
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        scalar => Ok(serde_json::to_writer(out, scalar)?),
    }
}

/// [`write_canonical`] of an object given as its map.
pub(crate) fn write_canonical_map(
    object: &serde_json::Map<String, Value>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut keys: Vec<&String> = object.keys().collect();
    keys.sort();
    out.write_all(b"{")?;
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, key)?;
        out.write_all(b":")?;
        write_canonical(&object[key], out)?;
    }
    out.write_all(b"}")
}

/// The same value with object keys sorted at every level, so equal payloads
/// serialize identically whatever order the client sent the keys in.
#[cfg(test)]
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
