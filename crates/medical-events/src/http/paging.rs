//! The `limit` query parameter shared by every paginated listing, so the
//! operator API and the patient timeline agree on bounds and on the error.

use super::problem::ApiError;

/// Page size when the caller does not ask for one.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page: bounds both the response and the query behind it.
pub const MAX_LIMIT: i64 = 1000;

/// Parses `limit`, refusing anything outside 1..=MAX_LIMIT with a 400 that
/// names the field.
pub fn page_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}
