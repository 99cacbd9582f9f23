//! A query-string extractor whose rejection is an [`ApiError`], so an unknown
//! or malformed parameter gets a problem+json `400` like every other bad
//! input, not axum's plain-text one.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::ApiError;

pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| QueryParams(params))
            .map_err(|rejection| {
                let detail = rejection.body_text();
                // axum's text leads with a generic prefix; the rest names the parameter.
                let detail = detail
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&detail)
                    .to_owned();
                ApiError::field("query", detail)
            })
    }
}
