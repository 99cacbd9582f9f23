//! The one place where `validator::ValidationErrors` become the API's
//! `errors` list: JSON field names, the order of the report, and the
//! messages validator cannot word by itself (lengths, and problems found
//! inside a field, such as a `$` key deep in `data`).

use std::borrow::Cow;

use serde_json::Value;
use validator::{ValidationError, ValidationErrors, ValidationErrorsKind};

use super::FieldError;

/// Param of a `ValidationError` listing problems found inside its field,
/// each `{field, message}` with its own path. A custom rule returns a single
/// `ValidationError` and `ValidationErrors::add` only takes `&'static str`
/// names, so a path such as `data.a[0].$set` can only travel in a param.
const PROBLEMS: &str = "problems";

/// A broken rule whose problems sit inside the field, each at its own path.
pub(super) fn located(code: &'static str, problems: &[FieldError]) -> ValidationError {
    let mut error = ValidationError::new(code);
    error.add_param(Cow::Borrowed(PROBLEMS), &problems);
    error
}

/// Request fields as `(Rust name, JSON name)`, in the order to report them.
pub(super) type FieldNames = [(&'static str, &'static str)];

/// The API's `errors` for everything `validate()` found.
///
/// Each field reports only the first rule it breaks, in the order its
/// attribute declares them: later rules assume the earlier ones hold (a
/// 300-character string is not also reported as blank), and that is how
/// the API has always answered. One rule may still yield several entries,
/// one per located problem.
pub(super) fn field_errors(errors: &ValidationErrors, names: &FieldNames) -> Vec<FieldError> {
    let mut broken = Vec::new();
    first_error_per_field(errors, &mut broken);
    // validator keeps fields in a HashMap; sort for a stable report. Fields
    // missing from `names` (a mistake) go last, still in a stable order.
    broken.sort_by_key(|(field, _)| {
        let rank = names.iter().position(|(rust, _)| rust == field);
        (rank.unwrap_or(names.len()), *field)
    });
    broken
        .into_iter()
        .flat_map(|(field, error)| {
            let json_name = names
                .iter()
                .find(|(rust, _)| *rust == field)
                .map_or(field, |(_, json)| json);
            to_field_errors(json_name, error)
        })
        .collect()
}

fn first_error_per_field<'a>(
    errors: &'a ValidationErrors,
    broken: &mut Vec<(&'a str, &'a ValidationError)>,
) {
    for (field, kind) in errors.errors() {
        match kind {
            ValidationErrorsKind::Field(list) => {
                if let Some(first) = list.first() {
                    broken.push((field, first));
                }
            }
            // The request types nest only serde-flattened parts, whose fields
            // sit at the top level of the body: no path prefix to add.
            ValidationErrorsKind::Struct(inner) => first_error_per_field(inner, broken),
            ValidationErrorsKind::List(items) => {
                for inner in items.values() {
                    first_error_per_field(inner, broken);
                }
            }
        }
    }
}

fn to_field_errors(json_name: &str, error: &ValidationError) -> Vec<FieldError> {
    match error.params.get(PROBLEMS).and_then(problems) {
        Some(located) => located,
        None => vec![FieldError::new(json_name, message(error))],
    }
}

fn problems(param: &Value) -> Option<Vec<FieldError>> {
    param
        .as_array()?
        .iter()
        .map(|problem| {
            Some(FieldError::new(
                problem.get("field")?.as_str()?,
                problem.get("message")?.as_str()?,
            ))
        })
        .collect()
}

fn message(error: &ValidationError) -> String {
    match &error.message {
        Some(message) => message.to_string(),
        None if error.code == "length" => length_message(error),
        None => format!("breaks the rule {:?}", error.code),
    }
}

/// Words a built-in `length` error from its params (`min`, `max`, and the
/// `value` that validator adds), counting characters as the rule does.
fn length_message(error: &ValidationError) -> String {
    let param = |name: &str| error.params.get(name).and_then(Value::as_u64);
    let Some(chars) = error
        .params
        .get("value")
        .and_then(Value::as_str)
        .map(|text| text.chars().count() as u64)
    else {
        return "has the wrong length".to_owned();
    };
    match (param("min"), param("max")) {
        (Some(_), _) if chars == 0 => "must not be empty".to_owned(),
        (Some(min), _) if chars < min => {
            format!("must be at least {min} characters (got {chars})")
        }
        (_, Some(max)) if chars > max => {
            format!("must be at most {max} characters (got {chars})")
        }
        _ => "has the wrong length".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NAMES: &FieldNames = &[
        ("unknown", "$"),
        ("patient_id", "patientId"),
        ("data", "data"),
    ];

    fn rule(code: &'static str, message: &'static str) -> ValidationError {
        ValidationError::new(code).with_message(Cow::Borrowed(message))
    }

    fn length(value: &str, min: u64, max: u64) -> ValidationError {
        let mut error = ValidationError::new("length");
        error.add_param(Cow::Borrowed("min"), &min);
        error.add_param(Cow::Borrowed("max"), &max);
        error.add_param(Cow::Borrowed("value"), &value);
        error
    }

    fn pairs(errors: &ValidationErrors) -> Vec<(String, String)> {
        field_errors(errors, NAMES)
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    fn pair(field: &str, message: &str) -> (String, String) {
        (field.to_owned(), message.to_owned())
    }

    #[test]
    fn fields_get_their_json_names_in_the_declared_order() {
        let mut errors = ValidationErrors::new();
        errors.add("data", rule("object", "must be a JSON object"));
        errors.add("patient_id", rule("required", "is required"));
        assert_eq!(
            pairs(&errors),
            [
                pair("patientId", "is required"),
                pair("data", "must be a JSON object")
            ]
        );
    }

    #[test]
    fn only_the_first_broken_rule_of_a_field_is_reported() {
        let mut errors = ValidationErrors::new();
        errors.add("patient_id", rule("blank", "must not be blank"));
        errors.add("patient_id", rule("control", "must not contain control"));
        assert_eq!(pairs(&errors), [pair("patientId", "must not be blank")]);
    }

    #[test]
    fn located_problems_each_keep_their_own_path_and_message() {
        let mut errors = ValidationErrors::new();
        let problems = [
            FieldError::new("data.a.$gt", "keys must not start with '$'"),
            FieldError::new("data", "keys must not contain NUL characters"),
            FieldError::new("data.a[0].$set", "keys must not start with '$'"),
        ];
        errors.add("data", located("storable", &problems));
        errors.add(
            "unknown",
            located("unknown", &[FieldError::new("extra", "unknown field")]),
        );
        assert_eq!(
            pairs(&errors),
            [
                pair("extra", "unknown field"),
                pair("data.a.$gt", "keys must not start with '$'"),
                pair("data", "keys must not contain NUL characters"),
                pair("data.a[0].$set", "keys must not start with '$'"),
            ]
        );
    }

    #[test]
    fn length_errors_are_worded_from_their_params_in_characters() {
        let cases = [
            (length("", 1, 3), "must not be empty"),
            (length("ab", 3, 5), "must be at least 3 characters (got 2)"),
            (
                length("ééééé", 1, 4),
                "must be at most 4 characters (got 5)",
            ),
        ];
        for (error, expected) in cases {
            let mut errors = ValidationErrors::new();
            errors.add("patient_id", error);
            assert_eq!(pairs(&errors), [pair("patientId", expected)]);
        }
    }

    #[test]
    fn nested_parts_are_flattened_into_the_same_order() {
        let mut inner = ValidationErrors::new();
        inner.add("data", rule("object", "must be a JSON object"));
        let mut outer = ValidationErrors::new();
        outer.add("patient_id", rule("required", "is required"));
        outer.merge_self("event", Err(inner));
        assert_eq!(
            pairs(&outer),
            [
                pair("patientId", "is required"),
                pair("data", "must be a JSON object")
            ]
        );
    }

    #[test]
    fn an_undeclared_field_or_message_still_says_what_broke() {
        let mut errors = ValidationErrors::new();
        errors.add("zeta", ValidationError::new("range"));
        errors.add("data", rule("object", "must be a JSON object"));
        errors.add("alpha", ValidationError::new("email"));
        assert_eq!(
            pairs(&errors),
            [
                pair("data", "must be a JSON object"),
                pair("alpha", "breaks the rule \"email\""),
                pair("zeta", "breaks the rule \"range\""),
            ]
        );
    }

    #[test]
    fn a_malformed_problems_param_falls_back_to_the_field() {
        let mut error = rule("storable", "cannot be stored");
        error.add_param(Cow::Borrowed(PROBLEMS), &json!([{ "path": "x" }]));
        let mut errors = ValidationErrors::new();
        errors.add("data", error);
        assert_eq!(pairs(&errors), [pair("data", "cannot be stored")]);
    }
}
